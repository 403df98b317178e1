"""The plain TinyBERT loop that bench/gpu_distill.py measures the engine against, written the way
TinyBERT's scripts and most re-implementations write it: fp32, eager attention (the only one that
returns attention maps), the teacher's forward pass on every step, batches padded to a fixed
length, torch's default AdamW and the loss read back to the host every step."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import PreTrainedModel

Batch = dict[str, Tensor]


class PlainLoop:
    """One optimizer step per call; `intermediate` (attention + hidden MSE) or `prediction`."""

    def __init__(
        self,
        teacher: PreTrainedModel,
        student: PreTrainedModel,
        *,
        device: torch.device,
        seq_len: int,
        learning_rate: float = 1e-4,
        temperature: float = 1.0,
    ) -> None:
        self.device, self.seq_len, self.temperature = device, seq_len, temperature
        self.teacher = _eager(teacher).to(device).train(False)
        self.student = _eager(student).to(device).train()
        n_t = teacher.config.num_hidden_layers
        n_s = student.config.num_hidden_layers
        self.layer_map = [m * n_t // n_s for m in range(1, n_s + 1)]  # teacher layer, 1-based
        # TinyBERT's fit_dense: one projection of student states to the teacher's width
        self.fit_dense = nn.Linear(student.config.hidden_size, teacher.config.hidden_size)
        self.fit_dense.to(device)
        self.params = [*self.student.parameters(), *self.fit_dense.parameters()]
        self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate)

    def inputs(self, batch: Batch) -> dict[str, Tensor]:
        """Padded to seq_len whatever the batch's own longest row (static padding)."""
        out = {}
        for name in ("input_ids", "token_type_ids", "attention_mask"):
            x = batch[name]
            x = F.pad(x, (0, self.seq_len - x.shape[1]), value=0)
            out[name] = x.to(self.device)
        return out

    def intermediate(self, batch: Batch) -> float:
        x = self.inputs(batch)
        with torch.no_grad():
            t = self.teacher(**x, output_hidden_states=True, output_attentions=True)
        s = self.student(**x, output_hidden_states=True, output_attentions=True)
        loss = torch.zeros((), device=self.device)
        for m, g in enumerate(self.layer_map):
            loss = loss + F.mse_loss(s.attentions[m], t.attentions[g - 1])
        for m, g in enumerate([0, *self.layer_map]):  # 0: the embedding output
            loss = loss + F.mse_loss(self.fit_dense(s.hidden_states[m]), t.hidden_states[g])
        return self._update(loss)

    def prediction(self, batch: Batch) -> float:
        x = self.inputs(batch)
        with torch.no_grad():
            t_logits = self.teacher(**x).logits
        s_logits = self.student(**x).logits
        soft = F.softmax(t_logits / self.temperature, dim=-1)
        loss = -(soft * F.log_softmax(s_logits / self.temperature, dim=-1)).sum(-1).mean()
        return self._update(loss)

    def _update(self, loss: Tensor) -> float:
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # unannotated in torch
        nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        return float(loss.item())


def _eager(model: PreTrainedModel) -> Any:
    """A copy with eager attention, so that output_attentions returns the maps."""
    copied = copy.deepcopy(model)
    copied.set_attn_implementation("eager")
    return copied
