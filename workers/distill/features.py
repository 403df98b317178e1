"""One forward pass -> what the losses read: logits, hidden states, captured q/k/v.

`TeacherTargets` is the seam for later speed work (caching teacher outputs, a faster runtime):
a step asks it for a batch's targets and does not care how they were made.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

from .capture import Projection, QKVCapture
from .data import Batch


@dataclass
class Features:
    logits: Tensor | None  # (b, C); None for a model without a head
    hidden: tuple[Tensor, ...]  # (num_layers + 1) x (b, L, d); [0] is the embedding output
    qkv: dict[tuple[int, Projection], Tensor]  # (0-based layer, projection) -> (b, L, H*d)


def autocast_for(device: torch.device, *, bf16: bool) -> AbstractContextManager[object]:
    """bf16 autocast on a GPU that supports it; plain float32 elsewhere."""
    if device.type == "cuda" and bf16 and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


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
        ids = batch["input_ids"].to(self.device)
        if self.input_map is not None:
            ids = self.input_map[ids]
        return {
            "input_ids": ids,
            "attention_mask": batch["attention_mask"].to(self.device),
            "token_type_ids": batch["token_type_ids"].to(self.device),
        }

    def __call__(self, batch: Batch, *, hidden: bool = True) -> Features:
        if self.capture is not None:
            self.capture.clear()
        with autocast_for(self.device, bf16=self.bf16):
            out = self.model(**self.inputs(batch), output_hidden_states=hidden)
        return Features(
            logits=getattr(out, "logits", None),
            hidden=tuple(out.hidden_states) if hidden else (),
            qkv=dict(self.capture.outputs) if self.capture is not None else {},
        )

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()


class TeacherTargets(FeatureModel):
    """The teacher's side of a step, without gradients."""

    def __call__(self, batch: Batch, *, hidden: bool = True) -> Features:
        with torch.no_grad():
            return super().__call__(batch, hidden=hidden)
