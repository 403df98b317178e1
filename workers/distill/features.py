"""One forward pass -> what the losses read: logits, hidden states, captured q/k/v.

`Targets` is the teacher's seam: a step asks it for a batch's targets and does not care how
they were made (a forward pass here, or read back from teacher_cache.TeacherCache).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from transformers import PreTrainedModel

from .capture import Projection, QKVCapture
from .data import Batch
from .precision import autocast_for


@dataclass
class Features:
    logits: Tensor | None  # (b, C); None for a model without a head
    hidden: Mapping[int, Tensor]  # layer -> (b, L, d); 0 is the embedding output
    qkv: Mapping[tuple[int, Projection], Tensor]  # (0-based layer, projection) -> (b, L, H*d)


class Targets(Protocol):
    """The teacher's side of a step: a batch's targets, however they are made."""

    def prepare(self, stopping: Callable[[], bool]) -> bool:
        """Work before the first step; False when `stopping()` interrupted it."""
        ...

    def __call__(self, batch: Batch, *, hidden: bool = True) -> Features: ...
    def close(self) -> None: ...


def on_device(model: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    """model.to(device), typed: HF's to() is @wraps(Module.to), a signature mypy misreads."""
    moved: PreTrainedModel = model.to(device)  # type: ignore[arg-type]
    return moved


class FeatureModel:
    """A model plus hooks on the layers whose attention the losses read."""

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        capture_layers: Sequence[int] = (),
        values: bool = False,
        device: torch.device,
        bf16: bool,
        input_map: Tensor | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.bf16 = bf16
        # (teacher vocabulary,) teacher id -> this model's id, for a trimmed vocabulary
        self.input_map = input_map.to(device) if input_map is not None else None
        self.capture = QKVCapture(model, capture_layers, values=values) if capture_layers else None

    def inputs(self, batch: Batch) -> dict[str, Tensor]:
        # non_blocking: a pinned host batch overlaps its copy with GPU work; a no-op on the CPU
        ids = batch["input_ids"].to(self.device, non_blocking=True)
        if self.input_map is not None:
            ids = self.input_map[ids]
        return {
            "input_ids": ids,
            "attention_mask": batch["attention_mask"].to(self.device, non_blocking=True),
            "token_type_ids": batch["token_type_ids"].to(self.device, non_blocking=True),
        }

    def __call__(self, batch: Batch, *, hidden: bool = True) -> Features:
        if self.capture is not None:
            self.capture.clear()
        with autocast_for(self.device, bf16=self.bf16):
            out = self.model(**self.inputs(batch), output_hidden_states=hidden)
        return Features(
            logits=getattr(out, "logits", None),
            hidden=dict(enumerate(out.hidden_states)) if hidden else {},
            qkv=dict(self.capture.outputs) if self.capture is not None else {},
        )

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()


class TeacherTargets(FeatureModel):
    """The teacher's side of a step, without gradients: a forward pass every step."""

    def prepare(self, stopping: Callable[[], bool]) -> bool:
        return True

    def __call__(self, batch: Batch, *, hidden: bool = True) -> Features:
        with torch.no_grad():
            return super().__call__(batch, hidden=hidden)
