"""TinyBERT (eqs. 7-11) and MiniLMv2 losses: small pure functions over tensors, and LOSSES, the
name -> function table a step's terms refer to (steps.py).

Shapes: b batch, L sequence, d width, H heads, C classes. `mask` is the (b, L) attention mask
(1 = real token, 0 = padding). `_s` is the student, `_t` the teacher. Every loss takes the
student's tensor first and its target second, then keyword options.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# The class id of a row without a gold label (an augmented copy): torch's ignore_index.
NO_CLASS = -100


def attention_scores(query: Tensor, key: Tensor, num_heads: int) -> Tensor:
    """(b, L, H*d) query and key projections -> (b, H, L, L) pre-softmax scores QK^T/sqrt(d)."""
    q, k = _split_heads(query, num_heads), _split_heads(key, num_heads)
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


def attention_mse(scores_s: Tensor, scores_t: Tensor, mask: Tensor) -> Tensor:
    """Eq. 8: MSE of (b, H, L, L) pre-softmax scores over pairs of real tokens, mean over heads."""
    pairs = _pair_mask(mask)  # (b, 1, L, L)
    sq = (scores_s.float() - scores_t.float()) ** 2 * pairs
    heads = scores_s.shape[1]
    return sq.sum() / (pairs.sum() * heads).clamp_min(1.0)


def hidden_mse(hidden_s_projected: Tensor, hidden_t: Tensor, mask: Tensor) -> Tensor:
    """Eqs. 9-10: MSE of (b, L, d_t) states over real tokens; the student's is already H_s W."""
    tokens = mask.to(torch.float32).unsqueeze(-1)  # (b, L, 1)
    sq = (hidden_s_projected.float() - hidden_t.float()) ** 2 * tokens
    return sq.sum() / (tokens.sum() * hidden_t.shape[-1]).clamp_min(1.0)


def soft_cross_entropy(logits_s: Tensor, logits_t: Tensor, temperature: float = 1.0) -> Tensor:
    """Eq. 11: CE between (b, C) teacher and student distributions softened by a temperature."""
    p_t = F.softmax(logits_t.float() / temperature, dim=-1)
    return -(p_t * F.log_softmax(logits_s.float() / temperature, dim=-1)).sum(-1).mean()


def hard_cross_entropy(logits_s: Tensor, labels: Tensor) -> Tensor:
    """(b, C) student logits against (b,) gold class ids, averaged over the rows that have one:
    a row labelled NO_CLASS (an augmented copy) is left out, and a batch of none gives 0."""
    total = F.cross_entropy(logits_s.float(), labels, ignore_index=NO_CLASS, reduction="sum")
    return total / (labels != NO_CLASS).sum().clamp_min(1)  # on the device: no host sync


def regression_mse(pred_s: Tensor, target: Tensor) -> Tensor:
    """(b, 1) or (b,) student outputs against (b,) teacher outputs or gold values."""
    return F.mse_loss(pred_s.float().reshape(-1), target.float().reshape(-1))


def label_mse(pred_s: Tensor, values: Tensor) -> Tensor:
    """regression_mse against (b,) gold values over the rows that have one: a NaN value (an
    augmented copy) is left out, and a batch of none gives 0."""
    p, t = pred_s.float().reshape(-1), values.float().reshape(-1)
    known = ~torch.isnan(t)
    sq = torch.where(known, (p - t.nan_to_num()) ** 2, torch.zeros_like(p))
    return sq.sum() / known.sum().clamp_min(1)


def relation_kl(x_s: Tensor, x_t: Tensor, mask: Tensor, num_relation_heads: int) -> Tensor:
    """MiniLMv2: KL(teacher || student) of one self-attention relation (Q-Q, K-K or V-V).

    x_s (b, L, d_s) and x_t (b, L, d_t) are one projection's outputs; both are split into the
    same number of relation heads, so widths and head counts may differ. Padded keys get zero
    probability and padded query rows are left out of the mean.
    """
    log_s = _relation_log_probs(x_s, mask, num_relation_heads)
    log_t = _relation_log_probs(x_t, mask, num_relation_heads)
    keys = mask.bool()[:, None, None, :]  # (b, 1, 1, L)
    kl = torch.where(keys, log_t.exp() * (log_t - log_s), torch.zeros_like(log_t)).sum(-1)
    rows = mask.to(kl.dtype)[:, None, :]  # (b, 1, L)
    return (kl * rows).sum() / (rows.sum() * num_relation_heads).clamp_min(1.0)


def _relation_log_probs(x: Tensor, mask: Tensor, heads: int) -> Tensor:
    r = _split_heads(x.float(), heads)  # (b, R, L, d_r)
    logits = r @ r.transpose(-1, -2) / math.sqrt(r.shape[-1])
    logits = logits.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(logits.dtype).min)
    return F.log_softmax(logits, dim=-1)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, length, width = x.shape
    if width % heads:
        raise ValueError(f"{heads} heads do not divide width {width}")
    return x.view(b, length, heads, width // heads).transpose(1, 2)


def _pair_mask(mask: Tensor) -> Tensor:
    m = mask.bool()
    return (m[:, None, :, None] & m[:, None, None, :]).to(torch.float32)


# name -> loss, as a step's terms name them (TextBrewer's shape): f(x_s, target, **options).
LOSSES: dict[str, Callable[..., Tensor]] = {
    "attention_mse": attention_mse,
    "hidden_mse": hidden_mse,
    "soft_ce": soft_cross_entropy,
    "hard_ce": hard_cross_entropy,
    "regression_mse": regression_mse,
    "label_mse": label_mse,
    "relation_kl": relation_kl,
}
