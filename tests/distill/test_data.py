from collections import Counter

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
