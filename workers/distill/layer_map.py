"""Which teacher layer each student layer learns from, and the encoder layers themselves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn
from transformers import PreTrainedModel

from .errors import DistillError


def layer_map(kind: str | Sequence[int], *, teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer (1-based) matched to each student layer m = 1..M; layer 0 is the embedding.

    uniform: g(m) = round(m * N / M), halves up, so the last student layer meets the last
    teacher layer for any N and M. top: the last M teacher layers. bottom: the first M.
    """
    n, m = teacher_layers, student_layers
    if isinstance(kind, str):
        if kind == "uniform":
            return [max(1, min(n, math.floor(i * n / m + 0.5))) for i in range(1, m + 1)]
        if kind in ("top", "bottom"):
            if m > n:
                raise DistillError(
                    "config_invalid",
                    f"layer_map {kind!r} needs a student ({m} layers) no deeper than the "
                    f"teacher ({n} layers)",
                )
            return list(range(n - m + 1, n + 1)) if kind == "top" else list(range(1, m + 1))
        raise DistillError("config_invalid", f"unknown layer_map {kind!r}")
    explicit = list(kind)
    if len(explicit) != m or not all(1 <= g <= n for g in explicit):
        raise DistillError(
            "config_invalid",
            f"layer_map {explicit} must list {m} teacher layers, each in 1..{n}",
        )
    return explicit


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The transformer blocks of a BERT-family model, 0-based."""
    base: Any = model.base_model
    layers = base.encoder.layer
    assert isinstance(layers, nn.ModuleList)
    return layers
