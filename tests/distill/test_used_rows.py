"""Training the embedding on its used rows gives what the dense table gives, within rounding."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.optim import AdamW

from tests.factories import Recorder, tiny_config
from workers.distill import trainer
from workers.distill.errors import Stopped
from workers.distill.trainer import run
from workers.distill.used_rows import UsedRows

# float32 rounding of the gradient-norm sum (a 30-row table summed apart from 3 rows, or not)
# drifts through a few AdamW steps; the losses and weights agree far closer than training moves them
RTOL, ATOL = 1e-4, 1e-6


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 8, padding_idx=0)
        self.out = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.emb(ids).mean(1))
        return out


def _train(model: _Tiny, batches: list[torch.Tensor], *, rows: UsedRows | None) -> list[float]:
    named = list(model.named_parameters())
    if rows is not None:
        named = rows.swap(named)
    params = [p for _, p in named]
    opt = AdamW(params, lr=0.05, weight_decay=0.1, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    losses = []
    for ids in batches:
        loss = model(ids).logsumexp(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        if rows is not None:
            rows.stepped(opt)
        sched.step()
        losses.append(float(loss))
    return losses


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 12, (4, 5), generator=g) for _ in range(6)]  # ids 0..11 of 30


def test_used_rows_match_the_dense_table_and_untouched_rows_only_decay() -> None:
    torch.manual_seed(0)
    dense = _Tiny()
    sparse = _Tiny()
    sparse.load_state_dict(dense.state_dict())
    start = dense.emb.weight.detach().clone()
    batches = _batches()
    rows = UsedRows(sparse.emb, torch.arange(12))
    assert not sparse.emb.weight.requires_grad and rows.rows.shape == (12, 8)

    dense_losses = _train(dense, batches, rows=None)
    sparse_losses = _train(sparse, batches, rows=rows)
    rows.detach()

    assert sparse_losses == pytest.approx(dense_losses, rel=RTOL, abs=ATOL)
    torch.testing.assert_close(sparse.emb.weight, dense.emb.weight, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(sparse.out.weight, dense.out.weight, rtol=RTOL, atol=ATOL)
    # rows 12..29 were never looked up: weight decay alone moved them, in both
    assert not torch.equal(dense.emb.weight[12:], start[12:])
    torch.testing.assert_close(sparse.emb.weight[12:], dense.emb.weight[12:], rtol=1e-6, atol=0)
    # the padding row gets no gradient in either numbering
    torch.testing.assert_close(sparse.emb.weight[0], dense.emb.weight[0], rtol=1e-6, atol=0)
    assert sparse.emb.weight.requires_grad and not sparse.emb._forward_hooks


def test_syncing_midway_changes_nothing() -> None:
    """A checkpoint writes the table mid-stage; the table at the end is the same bit for bit."""
    torch.manual_seed(0)
    once, twice = _Tiny(), _Tiny()
    twice.load_state_dict(once.state_dict())
    batches = _batches()
    a = UsedRows(once.emb, torch.arange(12))
    _train(once, batches, rows=a)
    a.detach()
    b = UsedRows(twice.emb, torch.arange(12))
    named = b.swap(list(twice.named_parameters()))
    params = [p for _, p in named]
    opt = AdamW(params, lr=0.05, weight_decay=0.1, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for i, ids in enumerate(batches):
        loss = twice(ids).logsumexp(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        b.stepped(opt)
        sched.step()
        if i in (1, 3):
            b.sync()
    b.detach()
    assert torch.equal(once.emb.weight, twice.emb.weight)


def _run(workdir: Path, teacher: Path, train, dev, recorder: Recorder, **kw):  # noqa: ANN001, ANN202
    return run(
        tiny_config(checkpoint_every_steps=10_000, hyperparameters={"epochs": 2}),
        teacher=str(teacher),
        train=train,
        validation=dev,
        workdir=workdir,
        callbacks=recorder,
        stop_poll_s=0.0,
        **kw,
    )


@pytest.mark.slow
def test_a_run_on_used_rows_repeats_the_dense_runs_losses(
    base_teacher_dir, train_examples, dev_examples, tmp_path, monkeypatch
) -> None:
    """Teacher fine-tuning, intermediate and prediction stages, with and without."""
    sparse = Recorder()
    _run(tmp_path / "sparse", base_teacher_dir, train_examples, dev_examples, sparse)
    monkeypatch.setattr(trainer, "USED_ROWS", False)
    dense = Recorder()
    _run(tmp_path / "dense", base_teacher_dir, train_examples, dev_examples, dense)
    assert [c[:2] for c in sparse.curve()] == [c[:2] for c in dense.curve()]
    assert [c[2] for c in sparse.curve()] == pytest.approx(
        [c[2] for c in dense.curve()], rel=1e-3, abs=1e-5
    )
    s = load_file(tmp_path / "sparse" / "export" / "model.safetensors")
    d = load_file(tmp_path / "dense" / "export" / "model.safetensors")
    assert s.keys() == d.keys()
    for key in s:
        torch.testing.assert_close(s[key], d[key], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_a_resumed_run_on_used_rows_ends_with_the_same_weights(
    base_teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    whole = Recorder()
    _run(tmp_path / "whole", base_teacher_dir, train_examples, dev_examples, whole)
    for stop_at in (2, 8):  # mid teacher fine-tuning, mid intermediate stage
        with pytest.raises(Stopped):
            _run(
                tmp_path / "cut",
                base_teacher_dir,
                train_examples,
                dev_examples,
                Recorder(stop_at=stop_at),
            )
    _run(tmp_path / "cut", base_teacher_dir, train_examples, dev_examples, Recorder())
    a = load_file(tmp_path / "whole" / "export" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "export" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
