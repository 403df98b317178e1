"""Attention inputs captured by hooks, so that pre-softmax scores exist under any attention kernel.

SDPA and flash attention return no scores; the scores are rebuilt from the captured (b, L, H*d)
query and key projections instead (losses.attention_scores): exact, and free of the kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from .layer_map import encoder_layers

Projection = Literal["query", "key", "value"]


class QKVCapture:
    """Forward hooks on chosen layers' attention query/key(/value) Linears."""

    def __init__(self, model: PreTrainedModel, layers: Sequence[int], *, values: bool) -> None:
        # (0-based layer, projection) -> (b, L, H*d), as the Linear returned it (graph kept)
        self.outputs: dict[tuple[int, Projection], Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        blocks = encoder_layers(model)
        names: tuple[Projection, ...] = ("query", "key", "value") if values else ("query", "key")
        for i in sorted(set(layers)):
            # a ModuleList item is typed as Module, whose attributes read as Tensor | Module
            attn: Any = blocks[i].attention.self  # type: ignore[union-attr]
            for name in names:
                self._handles.append(getattr(attn, name).register_forward_hook(self._hook(i, name)))

    def _hook(self, layer: int, name: Projection) -> Callable[[nn.Module, Any, Tensor], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            self.outputs[(layer, name)] = output

        return hook

    def get(self, layer: int, name: Projection) -> Tensor:
        return self.outputs[(layer, name)]

    def clear(self) -> None:
        self.outputs = {}

    def close(self) -> None:
        """The hooks go, and with them the last batch's tensors (and their graph)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.outputs = {}
