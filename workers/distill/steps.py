"""A training step built from a table of loss terms (TextBrewer's idea).

A stage's loss is a list of `Term`s: a name, a weight, a loss function named in losses.LOSSES
and the (student, target) pairs of tensors it compares, summed. The step runs the forward
passes the terms need, evaluates every term and returns them with their weighted total:

    intermediate / general   embedding  hidden_mse(W_e E_s, E_t)
                             hidden     sum_m hidden_mse(W_h H_s^m, H_t^g(m))
                             attention  sum_m attention_mse(A_s^m, A_t^g(m))   (or relation_kl)
    prediction               prediction T^2 soft_ce(z_s, z_t; T)   (regression: regression_mse)
                             hard_label hard_ce(z_s, y)            (regression: label_mse)
                                        gold rows only: an augmented copy has no label
    teacher_finetune         task       hard_ce(z, y)              (regression: regression_mse)

A term weighing 0 is left out, so its forward pass (the teacher's, the hooks) is never paid for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig

from contract.config import DistillConfig
from contract.vocab import Stage, Task

from .capture import Projection
from .data import Batch
from .errors import DistillError
from .features import FeatureModel, Features, Targets, TeacherTargets
from .layer_map import layer_map
from .losses import LOSSES, attention_scores
from .precision import use_bf16
from .student import Projections, Student
from .teacher import Teacher


@dataclass(frozen=True)
class Sides:
    """What a term may read in one step."""

    s: Features  # the model being trained
    t: Features | None  # the teacher's targets; None when no term reads them
    batch: Batch  # on the device


Pick = Callable[[Sides], Tensor]
Feature = Literal["hidden", "attention", "relation", "logits"]


@dataclass(frozen=True)
class Term:
    """sum over pairs of LOSSES[loss](student tensor, target tensor, **options)."""

    name: str  # its key among the step's components
    weight: float
    loss: str  # a key of losses.LOSSES
    feature: Feature  # what the pairs read: it decides the forward passes and hooks
    pairs: tuple[tuple[Pick, Pick], ...]
    options: Mapping[str, float] = field(default_factory=dict)
    masked: bool = False  # the loss also takes the batch's (b, L) attention mask
    reads_teacher: bool = True

    def __call__(self, sides: Sides) -> Tensor:
        fn = LOSSES[self.loss]
        mask = {"mask": sides.batch["attention_mask"]} if self.masked else {}
        values = [
            fn(pick_s(sides), pick_t(sides), **self.options, **mask)
            for pick_s, pick_t in self.pairs
        ]
        return sum(values[1:], values[0])


@dataclass(frozen=True)
class TargetSpec:
    """What a stage's terms read from the teacher: what a cache of its targets must hold."""

    hidden: tuple[int, ...]  # hidden states, by layer (0 = embedding output)
    qkv: tuple[tuple[int, Projection], ...]  # captured projections, by 0-based block
    logits: bool


class TargetCache(Protocol):
    """Turns the teacher's live targets into ones computed once (teacher_cache.py)."""

    def __call__(self, live: TeacherTargets, spec: TargetSpec) -> Targets: ...


class Step:
    """One batch -> {term name: loss, ..., "total": sum of weight * loss}; no backward."""

    def __init__(
        self,
        terms: Sequence[Term],
        *,
        model: FeatureModel,
        teacher: Targets | None,
        device: torch.device,
    ) -> None:
        if any(t.reads_teacher for t in terms) and teacher is None:
            raise ValueError("a term reads the teacher, but the step has none")
        self.terms = list(terms)
        self.model = model
        self.teacher = teacher
        self.device = device
        self.hidden = any(t.feature == "hidden" for t in terms)

    def prepare(self, stopping: Callable[[], bool]) -> bool:
        """The teacher's work before the first step (a cache to build); False if stopped."""
        return self.teacher is None or self.teacher.prepare(stopping)

    def __call__(self, batch: Batch) -> dict[str, Tensor]:
        on_device = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        f_s = self.model(on_device, hidden=self.hidden)
        # the host batch: a cache looks its rows up on the host, without a device sync
        f_t = self.teacher(batch, hidden=self.hidden) if self.teacher is not None else None
        sides = Sides(f_s, f_t, on_device)
        parts = {term.name: term(sides) for term in self.terms}
        total = torch.zeros((), device=self.device)
        for term in self.terms:
            total = total + term.weight * parts[term.name]
        parts["total"] = total
        return parts

    def close(self) -> None:
        """Remove the hooks; the models stay as they are."""
        self.model.close()
        if self.teacher is not None:
            self.teacher.close()


# --- the steps of each stage ---------------------------------------------------------------------


def distill_step(
    stage: Stage,
    config: DistillConfig,
    *,
    teacher: Teacher,
    student: Student,
    device: torch.device,
    cache: TargetCache | None = None,
) -> Step:
    """The student in train mode against the teacher in eval mode (its targets deterministic),
    whose targets `cache` may compute once instead of every step."""
    t_cfg, s_cfg = teacher.model.config, student.model.config
    match = Match.of(config, t_cfg, s_cfg)
    if stage == "prediction_distill":
        terms = prediction_terms(config, task=teacher.task)
    else:
        terms = intermediate_terms(
            config, match, student.projections, heads=s_cfg.num_attention_heads
        )
    capture = any(t.feature in ("attention", "relation") for t in terms)
    values = any(t.feature == "relation" for t in terms)
    bf16 = use_bf16(config, device)
    student.model.train()
    model = FeatureModel(
        student.model,
        capture_layers=range(s_cfg.num_hidden_layers) if capture else (),
        values=values,
        device=device,
        bf16=bf16,
        input_map=student.vocab.input_map,
    )
    targets: Targets | None = None
    if any(t.reads_teacher for t in terms):
        teacher.model.train(False)  # eval mode: no dropout in the targets
        live = TeacherTargets(
            teacher.model,
            capture_layers=[g - 1 for g in match.mapping] if capture else (),
            values=values,
            device=device,
            bf16=bf16,
        )
        targets = live if cache is None else cache(live, target_spec(terms, match, values))
    return Step(terms, model=model, teacher=targets, device=device)


def target_spec(terms: Sequence[Term], match: Match, values: bool) -> TargetSpec:
    """The teacher tensors `terms` read: matched layers only, so a cache holds no more."""
    read = {t.feature for t in terms if t.reads_teacher}
    names: tuple[Projection, ...] = ("query", "key", "value") if values else ("query", "key")
    blocks = sorted({g - 1 for g in match.mapping})
    attends = bool(read & {"attention", "relation"})
    return TargetSpec(
        hidden=tuple(sorted({0, *match.mapping})) if "hidden" in read else (),
        qkv=tuple((b, n) for b in blocks for n in names) if attends else (),
        logits="logits" in read,
    )


def finetune_step(teacher: Teacher, *, device: torch.device, bf16: bool) -> Step:
    """The teacher's own head (and body) trained on the labels."""
    teacher.model.train()
    model = FeatureModel(teacher.model, device=device, bf16=bf16)
    loss = "regression_mse" if teacher.task == "regression" else "hard_ce"
    term = Term("task", 1.0, loss, "logits", ((_logits("s"), _labels),), reads_teacher=False)
    return Step([term], model=model, teacher=None, device=device)


@dataclass(frozen=True)
class Match:
    """Which teacher layer each student layer learns from, and how attention is compared."""

    mapping: list[int]  # teacher layer g(m), 1-based, for student layers m = 1..M
    attention: Literal["mse", "relation"]
    relation_heads: int  # MiniLMv2 relation heads; 0 unless attention == "relation"

    @classmethod
    def of(cls, config: DistillConfig, t_cfg: PretrainedConfig, s_cfg: PretrainedConfig) -> Match:
        d = config.distillation
        mapping = layer_map(
            d.layer_map,
            teacher_layers=t_cfg.num_hidden_layers,
            student_layers=s_cfg.num_hidden_layers,
        )
        kind = attention_kind(
            d.attention_loss, t_cfg.num_attention_heads, s_cfg.num_attention_heads
        )
        heads = relation_heads(d.relation_heads, t_cfg, s_cfg) if kind == "relation" else 0
        return cls(mapping, kind, heads)


def intermediate_terms(
    config: DistillConfig, match: Match, projections: Projections, *, heads: int
) -> list[Term]:
    """TinyBERT eqs. 7-10 over the matched layers; the embedding output is layer 0 of both."""
    w = config.distillation.weights
    layers = list(enumerate(match.mapping, start=1))  # (student m, teacher g(m)), 1-based
    embedding = ((_projected(projections.embedding, 0), _hidden_t(0)),)
    hidden = tuple((_projected(projections.hidden, m), _hidden_t(g)) for m, g in layers)
    terms = [
        Term("embedding", w.embedding, "hidden_mse", "hidden", embedding, masked=True),
        Term("hidden", w.hidden, "hidden_mse", "hidden", hidden, masked=True),
    ]
    if match.attention == "mse":  # encoder blocks are 0-based: student m-1 <-> teacher g-1
        scores = tuple((_scores("s", m - 1, heads), _scores("t", g - 1, heads)) for m, g in layers)
        terms.append(
            Term("attention", w.attention, "attention_mse", "attention", scores, masked=True)
        )
    else:
        names: tuple[Projection, ...] = ("query", "key", "value")
        relations = tuple(
            (_qkv("s", m - 1, name), _qkv("t", g - 1, name)) for m, g in layers for name in names
        )
        options = {"num_relation_heads": match.relation_heads}
        terms.append(
            Term(
                "attention", w.attention, "relation_kl", "relation", relations, options, masked=True
            )
        )
    return [t for t in terms if t.weight > 0]


def prediction_terms(config: DistillConfig, *, task: Task) -> list[Term]:
    """TinyBERT eq. 11 (soft cross-entropy against the teacher) plus the gold labels."""
    w = config.distillation.weights
    logits = (_logits("s"), _logits("t"))
    gold = ((_logits("s"), _labels),)
    if task == "regression":
        terms = [
            Term("regression", w.regression, "regression_mse", "logits", (logits,)),
            Term("hard_label", w.hard_label, "label_mse", "logits", gold, reads_teacher=False),
        ]
    else:
        t = config.hyperparameters.temperature
        # Hinton et al. (2015): the soft term's gradients shrink as 1/T^2, so it weighs T^2 times
        # more, and a change of T leaves its balance with the labels as it was. The component
        # logged stays the plain cross-entropy; only the total carries the factor.
        terms = [
            Term(
                "prediction",
                w.prediction * t * t,
                "soft_ce",
                "logits",
                (logits,),
                {"temperature": t},
            ),
            Term("hard_label", w.hard_label, "hard_ce", "logits", gold, reads_teacher=False),
        ]
    return [t for t in terms if t.weight > 0]


def attention_kind(choice: str, heads_t: int, heads_s: int) -> Literal["mse", "relation"]:
    """TinyBERT's score MSE needs equal head counts; MiniLMv2's relations do not."""
    if choice == "mse" and heads_t != heads_s:
        raise DistillError(
            "config_invalid",
            f"attention_loss 'mse' needs equal head counts (teacher {heads_t}, student {heads_s}); "
            "use 'relation' or 'auto'",
        )
    if choice == "relation" or (choice == "auto" and heads_t != heads_s):
        return "relation"
    return "mse"


def relation_heads(chosen: int | None, t_cfg: PretrainedConfig, s_cfg: PretrainedConfig) -> int:
    """MiniLMv2 relation heads: a count dividing both widths (the teacher's heads if it can)."""
    d_t, d_s = t_cfg.hidden_size, s_cfg.hidden_size
    if chosen is not None:
        if d_t % chosen or d_s % chosen:
            raise DistillError(
                "config_invalid", f"relation_heads {chosen} must divide both widths ({d_t}, {d_s})"
            )
        return chosen
    for r in (t_cfg.num_attention_heads, s_cfg.num_attention_heads):
        if d_t % r == 0 and d_s % r == 0:
            return int(r)
    return math.gcd(d_t, d_s)


# --- what a term reads ---------------------------------------------------------------------------


def _features(sides: Sides, side: Literal["s", "t"]) -> Features:
    if side == "s":
        return sides.s
    assert sides.t is not None  # Step refuses a term that reads a teacher it does not have
    return sides.t


def _projected(projection: nn.Linear, layer: int) -> Pick:
    """(b, L, d_t): the student's hidden state `layer` (0 = embeddings) through W."""
    return lambda x: projection(x.s.hidden[layer])


def _hidden_t(layer: int) -> Pick:
    """(b, L, d_t): the teacher's hidden state `layer` (0 = embeddings)."""
    return lambda x: _features(x, "t").hidden[layer]


def _scores(side: Literal["s", "t"], block: int, heads: int) -> Pick:
    """(b, H, L, L): pre-softmax attention scores of encoder block `block` (0-based)."""

    def pick(x: Sides) -> Tensor:
        f = _features(x, side)
        return attention_scores(f.qkv[(block, "query")], f.qkv[(block, "key")], heads)

    return pick


def _qkv(side: Literal["s", "t"], block: int, name: Projection) -> Pick:
    """(b, L, H*d): one attention projection's output in encoder block `block` (0-based)."""
    return lambda x: _features(x, side).qkv[(block, name)]


def _logits(side: Literal["s", "t"]) -> Pick:
    """(b, C) logits, or (b, 1) predictions for regression."""

    def pick(x: Sides) -> Tensor:
        logits = _features(x, side).logits
        assert logits is not None  # a prediction term only runs on models with a head
        return logits

    return pick


def _labels(x: Sides) -> Tensor:
    """(b,) gold class ids or values."""
    return x.batch["labels"]
