from collections import Counter

import pytest
import torch

from contract.records import Example
from workers.distill.data import Batches, Encoded, collate, holdout


def _items(n: int) -> list[Encoded]:
    return [Encoded([2] + [10 + i] * (1 + i % 3) + [3], [0] * (3 + i % 3), i) for i in range(n)]


def test_last_partial_batch_is_kept_and_every_example_seen_once() -> None:
    batches = Batches(_items(10), batch_size=4, seed=0, pad_id=0)
    out = list(batches.epoch(stream=0, epoch=0))
    assert len(batches) == 3 and sorted(len(b["labels"]) for b in out) == [2, 4, 4]
    assert sorted(int(x) for b in out for x in b["labels"]) == list(range(10))


def test_order_is_seeded_per_epoch_and_resumable_mid_epoch() -> None:
    a = Batches(_items(10), batch_size=3, seed=7, pad_id=0)
    b = Batches(_items(10), batch_size=3, seed=7, pad_id=0)
    first = [x["labels"].tolist() for x in a.epoch(stream=1, epoch=0)]
    assert first == [x["labels"].tolist() for x in b.epoch(stream=1, epoch=0)]
    assert first != [x["labels"].tolist() for x in a.epoch(stream=1, epoch=1)]
    assert first[2:] == [x["labels"].tolist() for x in a.epoch(stream=1, epoch=0, start=2)]


def test_collate_pads_to_the_longest_in_the_batch() -> None:
    batch = collate(_items(3), pad_id=0)
    assert batch["input_ids"].shape == (3, 5)
    assert batch["attention_mask"].sum(1).tolist() == [3, 4, 5]
    assert batch["input_ids"][0, 3:].tolist() == [0, 0]


def test_holdout_is_stratified_and_seeded() -> None:
    examples = [Example(f"t{i}", label="a" if i < 30 else "b") for i in range(40)]
    train, val = holdout(examples, fraction=0.2, seed=3, stratify=True)
    assert Counter(e.label for e in val) == {"a": 6, "b": 2}
    assert len(train) + len(val) == 40
    assert holdout(examples, fraction=0.2, seed=3, stratify=True)[1] == val


def _spread(n: int) -> list[Encoded]:
    """Lengths 3..60 in a seeded random order, label = position (what "index" must say)."""
    g = torch.Generator().manual_seed(n)
    lengths = torch.randint(3, 61, (n,), generator=g).tolist()
    return [Encoded([7] * k, [0] * k, i) for i, k in enumerate(lengths)]


def _rows(batches: Batches, epoch: int, stream: int = 0) -> list[list[int]]:
    return [b["labels"].tolist() for b in batches.epoch(stream=stream, epoch=epoch)]


def test_bucketed_batches_cover_every_example_once_per_epoch() -> None:
    batches = Batches(_spread(1003), batch_size=8, seed=5, pad_id=0, bucket_batches=10)
    assert len(batches) == 126
    for epoch in range(3):
        out = list(batches.epoch(stream=0, epoch=epoch))
        assert len(out) == 126
        assert sorted(int(i) for b in out for i in b["labels"]) == list(range(1003))
        assert all(torch.equal(b["index"], b["labels"]) for b in out)  # index = row position


def test_bucketed_batches_are_seeded_and_shuffled_across_lengths() -> None:
    data = _spread(800)
    a = Batches(data, batch_size=8, seed=5, pad_id=0, bucket_batches=10)
    b = Batches(data, batch_size=8, seed=5, pad_id=0, bucket_batches=10)
    assert _rows(a, 0) == _rows(b, 0)
    assert _rows(a, 0) != _rows(a, 1) and _rows(a, 0) != _rows(a, 0, stream=1)
    other = Batches(data, batch_size=8, seed=6, pad_id=0, bucket_batches=10)
    assert _rows(a, 0) != _rows(other, 0)
    assert _rows(a, 1)[7:] == [x["labels"].tolist() for x in a.epoch(stream=0, epoch=1, start=7)]
    widths = [int(x["attention_mask"].shape[1]) for x in a.epoch(stream=0, epoch=0)]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
    # each chunk's rows are sorted, but which chunk a row falls in is random: pairs of
    # rows of different lengths share a batch in one epoch and not in another
    together = [{frozenset(r) for r in _rows(a, e)} for e in (0, 1)]
    assert together[0] != together[1]


def test_bucketing_cuts_the_padding() -> None:
    data = _spread(2000)
    plain = Batches(data, batch_size=32, seed=0, pad_id=0, bucket_batches=0)
    bucketed = Batches(data, batch_size=32, seed=0, pad_id=0)
    before = plain.padding_fraction(stream=0, epoch=0)
    after = bucketed.padding_fraction(stream=0, epoch=0)
    assert before > 0.3 and after < 0.1 * before
    real = sum(len(e.input_ids) for e in data)
    padded = sum(b["attention_mask"].numel() for b in bucketed.epoch(stream=0, epoch=0))
    assert after == pytest.approx(1 - real / padded)
