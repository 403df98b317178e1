"""The teacher cache hands a step the targets the teacher itself would: exactly where the batch's
width matches the pass that built it, within float rounding elsewhere; zeros on padding; the same
from memory and from disk; a file reused only for the very same teacher and data."""

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from contract.config import TeacherCacheConfig
from workers.distill.data import Batches, Encoded
from workers.distill.features import TeacherTargets
from workers.distill.steps import TargetSpec
from workers.distill.teacher_cache import TeacherCache, plan_cache

CPU = torch.device("cpu")
SPEC = TargetSpec(hidden=(0, 1, 2), qkv=((0, "query"), (1, "key")), logits=True)


def _teacher(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config).train(False)


def _data(n: int, *, lengths: list[int]) -> list[Encoded]:
    g = torch.Generator().manual_seed(n)
    out = []
    for i in range(n):
        length = lengths[i % len(lengths)]
        ids = [2] + torch.randint(5, 50, (length - 2,), generator=g).tolist() + [3]
        out.append(Encoded(ids, [0] * length, i % 3))
    return out


def _live(model: BertForSequenceClassification) -> TeacherTargets:
    return TeacherTargets(model, capture_layers=[0, 1], values=False, device=CPU, bf16=False)


def _cache(
    model: BertForSequenceClassification,
    data: list[Encoded],
    *,
    path: Path | None = None,
    bf16: bool = False,
    key: str = "run:1",
) -> TeacherCache:
    mode = "disk" if path is not None else "memory"
    plan = plan_cache(
        TeacherCacheConfig(mode=mode),
        SPEC,
        lengths=[len(e.input_ids) for e in data],
        width=16,
        labels=3,
        bf16=bf16,
        epochs=2,
        folder=path.parent if path is not None else Path("."),
    )
    cache = TeacherCache(
        _live(model), SPEC, data, plan=plan, pad_id=0, batch_size=8, path=path, key=key
    )
    assert cache.prepare(lambda: False)
    return cache


def _pairs(cache: TeacherCache, live: TeacherTargets, batches: Batches):  # noqa: ANN202
    for batch in batches.epoch(stream=0, epoch=0):
        yield batch, cache(batch), live(batch)


def test_cached_targets_are_the_teacher_s_own_exactly_at_the_same_width() -> None:
    """Rows of one length: every batch has the build pass's width, and float32 matches bit
    for bit, whichever rows the (shuffled) batch holds."""
    model = _teacher()
    data = _data(40, lengths=[9])
    cache, live = _cache(model, data), _live(model)
    for _, cached, own in _pairs(cache, live, Batches(data, batch_size=8, seed=3, pad_id=0)):
        assert cached.logits is not None and own.logits is not None
        assert torch.equal(cached.logits, own.logits)
        for layer in SPEC.hidden:
            assert torch.equal(cached.hidden[layer], own.hidden[layer]), layer
        for key in SPEC.qkv:
            assert torch.equal(cached.qkv[key], own.qkv[key]), key
    assert cache.stats.hits == 5 and cache.stats.rows == 40


def test_mixed_lengths_match_within_rounding_and_padding_reads_zeros() -> None:
    model = _teacher()
    data = _data(48, lengths=[5, 12, 7, 20, 9])
    cache, live = _cache(model, data), _live(model)
    batches = Batches(data, batch_size=6, seed=1, pad_id=0, bucket_batches=0)  # much padding
    for batch, cached, own in _pairs(cache, live, batches):
        real = batch["attention_mask"].bool()
        for layer in SPEC.hidden:
            torch.testing.assert_close(
                cached.hidden[layer][real], own.hidden[layer][real], rtol=1e-5, atol=1e-5
            )
            assert not cached.hidden[layer][~real].any()
        for key in SPEC.qkv:
            torch.testing.assert_close(cached.qkv[key][real], own.qkv[key][real])
        torch.testing.assert_close(cached.logits, own.logits)


def test_bf16_targets_are_within_bf16_rounding() -> None:
    model = _teacher()
    data = _data(24, lengths=[11])
    cache, live = _cache(model, data, bf16=True), _live(model)
    for _, cached, own in _pairs(cache, live, Batches(data, batch_size=8, seed=0, pad_id=0)):
        assert cached.hidden[2].dtype == torch.float32  # read back as float32 for the losses
        torch.testing.assert_close(cached.hidden[2], own.hidden[2], rtol=1e-2, atol=1e-2)
        assert torch.equal(cached.logits, own.logits)  # logits stay float32


def test_disk_holds_what_memory_holds_and_is_reused_only_for_the_same_teacher(
    tmp_path: Path,
) -> None:
    model = _teacher()
    data = _data(30, lengths=[4, 10, 6])
    path = tmp_path / "cache" / "intermediate.bin"
    memory, disk = _cache(model, data), _cache(model, data, path=path)
    assert path.is_file() and not disk.stats.reused
    batches = Batches(data, batch_size=8, seed=2, pad_id=0)
    for batch in batches.epoch(stream=0, epoch=0):
        a, b = memory(batch), disk(batch)
        assert all(torch.equal(a.hidden[k], b.hidden[k]) for k in SPEC.hidden)
        assert all(torch.equal(a.qkv[k], b.qkv[k]) for k in SPEC.qkv)

    assert _cache(model, data, path=path).stats.reused  # a resumed process reads the file
    assert not _cache(_teacher(seed=1), data, path=path).stats.reused  # another teacher
    assert not _cache(model, data, path=path, key="run:2").stats.reused  # another stage
    assert not _cache(model, data, path=path).stats.reused  # rebuilt over the other's
    again = _cache(model, data, path=path)
    assert again.stats.reused
    again.drop()
    assert not path.exists() and not path.with_suffix(".json").exists()


def test_a_build_interrupted_is_not_taken_for_complete(tmp_path: Path) -> None:
    model = _teacher()
    data = _data(200, lengths=[6])  # 4 batches of the build pass (64 rows at least)
    path = tmp_path / "c.bin"
    _cache(model, data, path=path)  # a complete file and manifest from an earlier attempt
    plan = plan_cache(
        TeacherCacheConfig(mode="disk"), SPEC, lengths=[6] * 200, width=16, labels=3,
        bf16=False, epochs=2, folder=tmp_path,
    )  # fmt: skip
    calls = iter(range(100))
    torn = TeacherCache(
        _live(_teacher(seed=5)), SPEC, data, plan=plan, pad_id=0, batch_size=8, path=path,
        key="run:1",
    )  # fmt: skip
    assert not torn.prepare(lambda: next(calls) >= 1)  # stopped after the first batch
    assert not _cache(_teacher(seed=5), data, path=path).stats.reused


@pytest.mark.parametrize(
    ("mode", "budget_mb", "epochs", "spec", "where"),
    [
        ("auto", 16, 3, SPEC, "memory"),  # 11.5 MB
        ("auto", 10, 3, SPEC, "disk"),  # over the budget
        ("auto", 1, 1, SPEC, "off"),  # one epoch reads each target once
        ("auto", 0, 1, TargetSpec((), (), logits=True), "memory"),  # logits always
        ("memory", 0, 3, SPEC, "memory"),
        ("disk", 1, 3, SPEC, "disk"),
        ("off", 1, 3, TargetSpec((), (), logits=True), "off"),
    ],
)
def test_where_the_targets_go(
    tmp_path: Path, mode: str, budget_mb: int, epochs: int, spec: TargetSpec, where: str
) -> None:
    plan = plan_cache(
        TeacherCacheConfig(mode=mode, memory_mb=budget_mb),  # type: ignore[arg-type]
        spec,
        lengths=[30] * 100,
        width=384,
        labels=2,
        bf16=True,
        epochs=epochs,
        folder=tmp_path,
    )
    assert plan.where == where
    if spec.hidden:  # 3001 token rows x 5 tensors x 384 wide x 2 bytes, + 100 x 2 logits
        assert plan.bytes == 3001 * 5 * 384 * 2 + 100 * 2 * 4
