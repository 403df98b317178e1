"""The student: its shape, its first weights (random, teacher layers, weight selection, another
model or another run's checkpoint) and the projections W_e and W_h."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from contract.config import DistillConfig
from contract.vocab import SUPPORTED_MODEL_TYPES

from .checkpoint import Checkpoint, load_file
from .errors import DistillError
from .features import on_device
from .layer_map import encoder_layers, layer_map
from .teacher import Teacher, head_kwargs, load_config, load_model
from .trim_vocab import StudentVocab, shrink_embeddings


class Projections(nn.Module):
    """W_e and W_h of TinyBERT eqs. 9-10: student width -> teacher width, any two widths.

    Equal widths start from the identity so a student copied from teacher layers starts at
    its true distance from the teacher; so does a student sliced from the teacher (`identity`),
    whose features are the teacher's first ones.
    """

    def __init__(self, width_s: int, width_t: int, *, identity: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Linear(width_s, width_t)
        self.hidden = nn.Linear(width_s, width_t)
        if width_s == width_t or (identity and width_s < width_t):
            for lin in (self.embedding, self.hidden):
                nn.init.eye_(lin.weight)
                nn.init.zeros_(lin.bias)


@dataclass
class Student:
    model: PreTrainedModel
    projections: Projections
    vocab: StudentVocab

    def load_state(self, state: Checkpoint) -> None:
        if state.student is not None:
            self.model.load_state_dict(state.student)
        if state.projections is not None:
            self.projections.load_state_dict(state.projections)


def create_student(
    config: DistillConfig,
    *,
    teacher: Teacher,
    vocab: StudentVocab,
    device: torch.device,
    init_model: str | None = None,
    init_checkpoint: Path | None = None,
    state: Checkpoint | None = None,
) -> Student:
    """The student and its projections on `device`, from `state` when resuming."""
    # A forked, fixed seed: the student is the same whether built at the start or on resume.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_student(
            config, teacher=teacher, init_model=init_model, init_checkpoint=init_checkpoint
        )
        if vocab.kept_ids is not None:
            shrink_embeddings(model, vocab.kept_ids)
        t_cfg, s_cfg = teacher.model.config, model.config
        init = "checkpoint" if init_checkpoint is not None else config.student.init
        sliced = init != "checkpoint" and "teacher_select" == effective_init(
            init, teacher=t_cfg, hidden=s_cfg.hidden_size, intermediate=s_cfg.intermediate_size
        )
        projections = Projections(s_cfg.hidden_size, t_cfg.hidden_size, identity=sliced)
    student = Student(
        on_device(model, device),
        projections.to(device),
        vocab,
    )
    if state is not None:
        student.load_state(state)
    elif init_checkpoint is not None:
        load_checkpoint_projections(student.projections, init_checkpoint)
    return student


def build_student(
    config: DistillConfig,
    *,
    teacher: Teacher,
    init_model: str | None = None,
    init_checkpoint: Path | None = None,
) -> PreTrainedModel:
    """The student, initialised per `config.student.init`; call under a seeded RNG.

    `init_model` is where the caller found the config's init_model (the config's own value
    when None); `init_checkpoint` is another run's checkpoint file, whose student weights win
    over any init.
    """
    s = config.student
    if init_checkpoint is None and s.init == "checkpoint" and s.init_model is not None:
        init_checkpoint = Path(s.init_model)  # a config from before init_checkpoint existed
    if init_checkpoint is None and s.init == "model":
        return _from_model(init_model or s.init_model, teacher=teacher)

    t_cfg = teacher.model.config
    dims = s.dims()
    cfg = copy.deepcopy(t_cfg)
    cfg.num_hidden_layers = dims.num_layers
    cfg.hidden_size = dims.hidden_size
    cfg.num_attention_heads = dims.num_attention_heads
    cfg.intermediate_size = dims.intermediate_size
    cfg.architectures = None
    if teacher.task != "general":
        for key, value in head_kwargs(teacher.task, teacher.labels).items():
            setattr(cfg, key, value)
    model_cls = AutoModel if teacher.task == "general" else AutoModelForSequenceClassification
    # transformers leaves from_config unannotated
    student: PreTrainedModel = model_cls.from_config(cfg)  # type: ignore[no-untyped-call]
    if init_checkpoint is not None:
        load_checkpoint_student(student, init_checkpoint)
        return student
    init = effective_init(
        s.init, teacher=t_cfg, hidden=dims.hidden_size, intermediate=dims.intermediate_size
    )
    if init in ("teacher_layers", "teacher_select"):
        _check_fits(init, teacher=t_cfg, hidden=dims.hidden_size, inner=dims.intermediate_size)
        mapping = layer_map(
            config.distillation.layer_map,
            teacher_layers=t_cfg.num_hidden_layers,
            student_layers=dims.num_layers,
        )
        copy_teacher_layers(student, teacher.model, mapping, copy_head=teacher.has_head)
    return student


def _from_model(source: str | None, *, teacher: Teacher) -> PreTrainedModel:
    assert source is not None  # the config validator guarantees init_model for init='model'
    init_config = load_config(source, code="student_init_not_found", what="init_model")
    if getattr(init_config, "model_type", "") not in SUPPORTED_MODEL_TYPES:
        raise DistillError(
            "student_init_unsupported",
            f"init_model type {init_config.model_type!r} is not BERT-family",
        )
    return load_model(
        source, task=teacher.task, labels=teacher.labels, code="student_init_not_found"
    )


def _check_fits(init: str, *, teacher: PretrainedConfig, hidden: int, inner: int) -> None:
    t_hidden, t_inner = teacher.hidden_size, teacher.intermediate_size
    if init == "teacher_layers" and (hidden, inner) != (t_hidden, t_inner):
        raise DistillError(
            "student_init_invalid",
            "init='teacher_layers' needs the teacher's hidden and intermediate sizes "
            f"({t_hidden}, {t_inner}); the student has ({hidden}, {inner}); "
            "init='teacher_select' slices a narrower student out of them",
        )
    if hidden > t_hidden or inner > t_inner:
        raise DistillError(
            "student_init_invalid",
            f"init='{init}' needs a student no wider than the teacher "
            f"(hidden {t_hidden}, intermediate {t_inner}); the student has ({hidden}, {inner})",
        )


def effective_init(init: str, *, teacher: PretrainedConfig, hidden: int, intermediate: int) -> str:
    """What `auto` means for this teacher and shape: the teacher's layers as they are when the
    widths match, sliced (weight selection) when the student is narrower, else random.

    Measured by bench/quality.py (rt-polarity, r8): a tinybert-4l-312d student sliced from the
    fine-tuned teacher and then task-distilled kept 94.7% / 99.0% of the teacher's accuracy; the
    same run from a random start 68.9% (the majority class) / 81.2% (macro-F1 0.215)."""
    if init != "auto":
        return init
    if (hidden, intermediate) == (teacher.hidden_size, teacher.intermediate_size):
        return "teacher_layers"
    if hidden <= teacher.hidden_size and intermediate <= teacher.intermediate_size:
        return "teacher_select"
    return "random"


def load_checkpoint_student(student: PreTrainedModel, path: Path) -> None:
    """Start from another run's checkpointed student: every tensor whose name and shape match.
    A task head for other labels starts fresh; any other mismatch is an error."""
    state = load_file(path).student
    if state is None:
        raise DistillError("checkpoint_mismatch", f"{path} holds no student weights yet")
    own = student.state_dict()
    state = _as_layout_of(own, state, f"{student.base_model_prefix}.")
    head = {name for name in own if name.startswith(("classifier.", "score."))}
    wrong = sorted(
        n for n, t in state.items() if n in own and own[n].shape != t.shape and n not in head
    )
    missing = sorted(n for n in own if n not in state and n not in head)
    if wrong or missing:
        raise DistillError(
            "checkpoint_mismatch",
            "the checkpoint's student has another shape "
            f"(first differences: {(wrong + missing)[:3]})",
        )
    usable = {n: t for n, t in state.items() if n in own and own[n].shape == t.shape}
    student.load_state_dict(usable, strict=False)


def _as_layout_of(
    own: dict[str, Tensor], state: dict[str, Tensor], prefix: str
) -> dict[str, Tensor]:
    """A base model's tensors (a task "general" student) renamed under a task model's base
    ("bert."), or a task model's base renamed for a base model (its head left behind)."""
    own_prefixed = any(n.startswith(prefix) for n in own)
    state_prefixed = any(n.startswith(prefix) for n in state)
    if own_prefixed and not state_prefixed:
        return {prefix + n: t for n, t in state.items()}
    if state_prefixed and not own_prefixed:
        return {n.removeprefix(prefix): t for n, t in state.items() if n.startswith(prefix)}
    return state


def load_checkpoint_projections(projections: Projections, path: Path) -> bool:
    """W_e and W_h from another run's checkpoint (a general student's, trained with them), as
    TinyBERT's task distillation starts from the general model's; kept fresh when that run's
    teacher had another width. True when they were loaded."""
    saved = load_file(path).projections
    own = projections.state_dict()
    if not saved or saved.keys() != own.keys():
        return False
    if any(saved[k].shape != own[k].shape for k in own):
        return False
    projections.load_state_dict(saved)
    return True


# --- weight selection ----------------------------------------------------------------------------


def copy_teacher_layers(
    student: PreTrainedModel, teacher: PreTrainedModel, mapping: Sequence[int], *, copy_head: bool
) -> None:
    """Embeddings, pooler, head and student layer m <- teacher layer mapping[m-1].

    A student as wide as the teacher gets exact copies. A narrower one gets weight selection
    (Xu et al., "Initializing Models with Larger Ones", ICLR 2024): every tensor is sliced with
    the same indices along the same kind of axis, so the residual stream keeps the teacher's
    first `hidden` features everywhere, the feed-forward its first `intermediate` units and each
    attention head the first dimensions of the teacher head it comes from (when the head counts
    match; otherwise the first heads' dimensions, in order).
    """
    t_cfg, s_cfg = teacher.config, student.config
    index = _Index(
        hidden=torch.arange(s_cfg.hidden_size),
        heads=_head_indices(t_cfg, s_cfg),
        inner=torch.arange(s_cfg.intermediate_size),
    )
    s_base: Any = student.base_model
    t_base: Any = teacher.base_model
    with torch.no_grad():
        _select_into(s_base.embeddings, t_base.embeddings, index)
        s_layers, t_layers = encoder_layers(student), encoder_layers(teacher)
        for m, g in enumerate(mapping):
            _select_into(s_layers[m], t_layers[g - 1], index)
        if (
            getattr(s_base, "pooler", None) is not None
            and getattr(t_base, "pooler", None) is not None
        ):
            _select_into(s_base.pooler, t_base.pooler, index)
        s_head, t_head = _head(student), _head(teacher)
        if copy_head and s_head is not None and t_head is not None:
            if _sliceable(s_head.state_dict(), t_head.state_dict(), len(index.hidden)):
                _select_into(s_head, t_head, index)


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


def _head_indices(t_cfg: PretrainedConfig, s_cfg: PretrainedConfig) -> Tensor:
    """Which of the teacher's attention features (heads x head_dim) each student feature takes."""
    t_dim = t_cfg.hidden_size // t_cfg.num_attention_heads
    s_dim = s_cfg.hidden_size // s_cfg.num_attention_heads
    if t_cfg.num_attention_heads == s_cfg.num_attention_heads and s_dim <= t_dim:
        return torch.cat(
            [h * t_dim + torch.arange(s_dim) for h in range(s_cfg.num_attention_heads)]
        )
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
