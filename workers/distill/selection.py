"""Weight selection: a narrower student sliced out of teacher layers (Xu et al., "Initializing
Models with Larger Ones", ICLR 2024), keeping the first features or the most active ones on a
few calibration batches."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from .data import Batch, Encoded, collate
from .layer_map import encoder_layers

# How many training rows rank the teacher's features: enough for stable means, a fraction of a
# second of teacher forwards on a CPU (Minitron, below, calibrates on 1024 samples of a far
# larger model).
CALIBRATION_ROWS = 256
CALIBRATION_BATCH = 32


def calibration_batches(
    data: Sequence[Encoded], *, pad_id: int, seed: int, rows: int = CALIBRATION_ROWS
) -> list[Batch]:
    """A seeded sample of `data` (datasets often come sorted by label), in padded batches."""
    if not data:
        return []
    picked = sorted(random.Random(seed).sample(range(len(data)), min(rows, len(data))))
    chosen = [data[i] for i in picked]
    return [
        collate(chosen[i : i + CALIBRATION_BATCH], pad_id=pad_id)
        for i in range(0, len(chosen), CALIBRATION_BATCH)
    ]


@dataclass(frozen=True)
class Importance:
    """Per-feature scores of the teacher: higher is kept first."""

    hidden: Tensor  # (hidden_t,) residual-stream features, one ranking for every layer
    heads: list[Tensor]  # per teacher layer, (heads_t,)
    inner: list[Tensor]  # per teacher layer, (intermediate_t,)


def measure_importance(
    teacher: PreTrainedModel, batches: Sequence[Batch], mapping: Sequence[int]
) -> Importance:
    """Activation-based importance on a few batches, forward passes only.

    As Minitron does (Muralidharan et al., "Compact Language Models via Pruning and Knowledge
    Distillation", 2024, sec. 2.2): a residual feature scores the mean |value| of its
    LayerNorm output (the embeddings' and each kept layer's), a feed-forward unit the mean
    |activation| of its layer's intermediate output, and a head the mean L2 norm of what it
    adds to the residual stream, its context vectors times its slice of the output projection
    (the norm-based view of attention of Kobayashi et al., EMNLP 2020; Michel et al., "Are
    Sixteen Heads Really Better than One?", 2019, score heads by a gradient instead, which
    needs labels a task "general" job does not have). Means are over real (unpadded) tokens.
    """
    cfg = teacher.config
    n_heads = int(cfg.num_attention_heads)
    layers = encoder_layers(teacher)
    hidden = torch.zeros(cfg.hidden_size, dtype=torch.float64)
    heads = [torch.zeros(n_heads, dtype=torch.float64) for _ in layers]
    inner = [torch.zeros(cfg.intermediate_size, dtype=torch.float64) for _ in layers]
    mask: list[Tensor] = []  # the current batch's (batch, seq, 1) real-token mask

    def masked_sum(x: Tensor) -> Tensor:
        return (x.float() * mask[0]).sum(dim=(0, 1)).double().cpu()

    def on_inner(i: int) -> Any:
        def hook(_module: nn.Module, _args: Any, out: Tensor) -> None:
            inner[i] += masked_sum(out.abs())

        return hook

    def on_context(i: int, dense: Any) -> Any:
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            context = args[0].float()  # (batch, seq, heads * head_dim)
            b, t, _ = context.shape
            w = dense.weight.float().view(dense.out_features, n_heads, -1)
            per_head = torch.einsum("bthd,khd->bthk", context.view(b, t, n_heads, -1), w)
            heads[i] += masked_sum(per_head.norm(dim=-1))

        return hook

    handles = []
    layer: Any
    for i, layer in enumerate(layers):
        handles.append(layer.intermediate.register_forward_hook(on_inner(i)))
        dense = layer.attention.output.dense
        handles.append(dense.register_forward_pre_hook(on_context(i, dense)))
    was_training = teacher.training
    device = next(teacher.parameters()).device
    tokens = 0
    base: Any = teacher.base_model
    try:
        teacher.train(False)
        with torch.no_grad():
            for batch in batches:
                on = {k: batch[k].to(device) for k in ("input_ids", "token_type_ids")}
                attention = batch["attention_mask"].to(device)
                mask[:] = [attention.unsqueeze(-1).float()]
                out = base(**on, attention_mask=attention, output_hidden_states=True)
                for g in (0, *mapping):
                    hidden += masked_sum(out.hidden_states[g].abs())
                tokens += int(attention.sum())
    finally:
        for h in handles:
            h.remove()
        teacher.train(was_training)
    n = max(tokens, 1)
    return Importance(hidden / n, [h / n for h in heads], [u / n for u in inner])


def _top(scores: Tensor | None, k: int) -> Tensor:
    """The k best-scored positions in increasing order (the first k without scores); ties go
    to the lower position, so equal scores keep the first ones."""
    if scores is None:
        return torch.arange(k)
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:k].sort().values


def copy_teacher_layers(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    mapping: Sequence[int],
    *,
    copy_head: bool,
    importance: Importance | None = None,
) -> _Index:
    """Embeddings, pooler, head and student layer m <- teacher layer mapping[m-1]; returns the
    teacher features kept (the first student layer's heads and units).

    A student as wide as the teacher gets exact copies. A narrower one gets weight selection
    (Xu et al., "Initializing Models with Larger Ones", ICLR 2024): every tensor is sliced with
    the same indices along the same kind of axis, so the residual stream keeps the same
    `hidden` teacher features everywhere, each layer's feed-forward `intermediate` of its
    teacher layer's units and `heads` of its teacher layer's heads, whole when the head widths
    match (else the first dimensions of each). Which ones: the best by `importance`, else the
    first; always in the teacher's order. A student whose heads are wider than the teacher's
    takes the first `hidden` attention features, in order.
    """
    t_cfg, s_cfg = teacher.config, student.config
    hidden = _top(None if importance is None else importance.hidden, s_cfg.hidden_size)

    def index(g: int) -> _Index:
        head_scores = None if importance is None else importance.heads[g - 1]
        inner_scores = None if importance is None else importance.inner[g - 1]
        return _Index(
            hidden=hidden,
            heads=_head_indices(t_cfg, s_cfg, head_scores),
            inner=_top(inner_scores, s_cfg.intermediate_size),
        )

    s_base: Any = student.base_model
    t_base: Any = teacher.base_model
    first = index(mapping[0])
    with torch.no_grad():
        _select_into(s_base.embeddings, t_base.embeddings, first)
        s_layers, t_layers = encoder_layers(student), encoder_layers(teacher)
        for m, g in enumerate(mapping):
            _select_into(s_layers[m], t_layers[g - 1], index(g))
        if (
            getattr(s_base, "pooler", None) is not None
            and getattr(t_base, "pooler", None) is not None
        ):
            _select_into(s_base.pooler, t_base.pooler, first)
        s_head, t_head = _head(student), _head(teacher)
        if copy_head and s_head is not None and t_head is not None:
            if _sliceable(s_head.state_dict(), t_head.state_dict(), len(hidden)):
                _select_into(s_head, t_head, first)
    return first


@dataclass(frozen=True)
class _Index:
    hidden: Tensor  # residual-stream features the student keeps
    heads: Tensor  # attention features (heads x head_dim) the student keeps
    inner: Tensor  # feed-forward units the student keeps


def _sliceable(s_sd: dict[str, Tensor], t_sd: dict[str, Tensor], hidden: int) -> bool:
    """Same tensors, each student axis either the teacher's or the student's width."""
    return s_sd.keys() == t_sd.keys() and all(
        s_sd[k].dim() == t_sd[k].dim()
        and all(a == b or a == hidden for a, b in zip(s_sd[k].shape, t_sd[k].shape, strict=True))
        for k in s_sd
    )


def _head_indices(
    t_cfg: PretrainedConfig, s_cfg: PretrainedConfig, scores: Tensor | None = None
) -> Tensor:
    """Which of the teacher's attention features (heads x head_dim) each student feature takes:
    the best-scored (else first) heads, each its first head_dim dimensions."""
    t_heads, s_heads = t_cfg.num_attention_heads, s_cfg.num_attention_heads
    t_dim = t_cfg.hidden_size // t_heads
    s_dim = s_cfg.hidden_size // s_heads
    if s_heads <= t_heads and s_dim <= t_dim:
        kept = _top(scores, s_heads)
        return torch.cat([int(h) * t_dim + torch.arange(s_dim) for h in kept])
    return torch.arange(s_cfg.hidden_size)


def _select_into(student: nn.Module, teacher: nn.Module, index: _Index) -> None:
    """Copy each of `teacher`'s tensors into `student`'s, sliced where the student is smaller."""
    t_sd = teacher.state_dict()
    out: dict[str, Tensor] = {}
    for name, s_t in student.state_dict().items():
        t = t_sd[name]
        for axis, size in enumerate(s_t.shape):
            if t.shape[axis] == size:
                continue
            keep = index.hidden
            if axis == 0 and re.search(r"attention\.self\.(query|key|value)\.", name):
                keep = index.heads
            elif axis == 1 and name.endswith("attention.output.dense.weight"):
                keep = index.heads
            elif (axis == 0 and name.startswith("intermediate.dense.")) or (
                axis == 1 and name == "output.dense.weight"
            ):
                keep = index.inner
            t = t.index_select(axis, keep.to(t.device))
        out[name] = t.clone()
    student.load_state_dict(out)


def _head(model: PreTrainedModel) -> nn.Module | None:
    head = getattr(model, "classifier", None)
    return head if isinstance(head, nn.Module) else None
