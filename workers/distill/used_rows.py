"""The word embedding trained on the rows a stage's data uses, not the whole vocabulary.

A batch of 32 short rows touches a few hundred of the 30,522 rows of a BERT vocabulary, yet a
dense embedding gradient makes every step zero-fill, clip and AdamW-update all of them: on the
250-row default job about 12% of a student's step and more of the teacher's (its embedding is
half its parameters). Here the stage trains a parameter holding only the rows its data can
reach (`used`: every id of the stage's rows, and padding); the embedding's forward output is
looked up in it instead.

What the other rows get is what dense AdamW gives them: their gradient is zero on every step
and their Adam moments stay zero, so AdamW's only effect on them is the decoupled weight decay,
`w *= 1 - lr * weight_decay`, once per step that had a gradient. Those factors are recorded and
applied in order, one multiplication each, whenever the full table is needed (a checkpoint, the
end of the stage): the same float32 operations dense AdamW does, so where a run stops and resumes
changes nothing. The used rows see the same per-element AdamW update; only the order of sums
inside the gradient-norm clip differs from the dense run, a float rounding (tested within a
tolerance in tests/distill/test_used_rows.py).

The checkpoint's optimizer state holds the moments of the used rows only (shape (len(used), d));
`used` is a pure function of the stage's data, so a resumed run rebuilds the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812  # torch's own spelling
from torch.optim import Optimizer
from transformers import PreTrainedModel


class UsedRows:
    """While attached, `rows` is the trainable embedding; `sync()` writes it back in full."""

    def __init__(self, embedding: nn.Embedding, used: Tensor) -> None:
        self.embedding = embedding
        self.weight = embedding.weight
        self.used = used  # (n,) sorted vocabulary ids
        # vocabulary id -> row of `rows`; -1 (an index error) for an id the stage cannot see
        self.slot = torch.full((self.weight.shape[0],), -1, dtype=torch.long, device=used.device)
        self.slot[used] = torch.arange(len(used), device=used.device)
        self.rows = nn.Parameter(self.weight.detach()[used].clone())
        pad = embedding.padding_idx  # its row gets no gradient, in either numbering
        self.padding_idx = int(self.slot[pad]) if pad is not None and self.slot[pad] >= 0 else None
        self.pending: list[float] = []  # weight-decay factors not yet applied to the table
        self.weight.requires_grad_(False)
        self.handle = embedding.register_forward_hook(self._lookup)

    def _lookup(self, _module: nn.Module, args: tuple[Any, ...], _output: Tensor) -> Tensor:
        return F.embedding(self.slot[args[0]], self.rows, self.padding_idx)

    def swap(self, params: Sequence[tuple[str, nn.Parameter]]) -> list[tuple[str, nn.Parameter]]:
        """`params` with `rows` in the embedding weight's place (same name, same position)."""
        return [(n, self.rows if p is self.weight else p) for n, p in params]

    def stepped(self, optimizer: Optimizer) -> None:
        """After optimizer.step(), before the schedule moves: the decay this step applied."""
        if self.rows.grad is None:  # AdamW skips a parameter without a gradient
            return
        group = next(g for g in optimizer.param_groups if any(p is self.rows for p in g["params"]))
        decay = float(group["weight_decay"])
        if decay:
            self.pending.append(1.0 - float(group["lr"]) * decay)

    @torch.no_grad()
    def sync(self) -> None:
        """The full table as dense AdamW would have it now."""
        for factor in self.pending:
            self.weight.mul_(factor)
        self.pending.clear()
        self.weight[self.used] = self.rows.detach()

    def detach(self) -> None:
        """The table back in full and trainable again; the hook goes."""
        self.sync()
        self.handle.remove()
        self.weight.requires_grad_(True)


def attach_used_rows(
    model: PreTrainedModel, ids: Iterable[Sequence[int]], *, extra: Iterable[int] = ()
) -> UsedRows | None:
    """UsedRows for `model`'s word embedding over the ids of `ids` rows (and `extra`), in the
    model's own numbering; None where it does not apply (a table tied to an output layer)."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding) or not embedding.weight.requires_grad:
        return None
    output = model.get_output_embeddings()  # type: ignore[no-untyped-call]  # unannotated in HF
    if output is not None and getattr(output, "weight", None) is embedding.weight:
        return None  # tied: every row gets a gradient through the output layer
    seen: set[int] = set(extra)
    for row in ids:
        seen.update(row)
    used = torch.tensor(sorted(seen), dtype=torch.long, device=embedding.weight.device)
    return UsedRows(embedding, used)
