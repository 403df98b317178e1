"""The student: its shape, its first weights (random, teacher layers, weight selection, another
model or another run's checkpoint) and the projections W_e and W_h."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from contract.config import DistillConfig, StudentConfig
from contract.vocab import SUPPORTED_MODEL_TYPES

from .checkpoint import Checkpoint, load_file
from .data import Batch, Encoded
from .errors import DistillError
from .features import on_device
from .layer_map import layer_map
from .selection import calibration_batches, copy_teacher_layers, measure_importance
from .teacher import Teacher, head_kwargs, load_config, load_model
from .trim_vocab import StudentVocab, shrink_embeddings


class Projections(nn.Module):
    """W_e and W_h of TinyBERT eqs. 9-10: student width -> teacher width, any two widths.

    Equal widths start from the identity so a student copied from teacher layers starts at
    its true distance from the teacher; so does a student sliced from the teacher (`identity`):
    student feature i goes back to the teacher feature it was taken from, `features[i]` (the
    first ones when None).
    """

    def __init__(
        self,
        width_s: int,
        width_t: int,
        *,
        identity: bool = False,
        features: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.embedding = nn.Linear(width_s, width_t)
        self.hidden = nn.Linear(width_s, width_t)
        if width_s == width_t or (identity and width_s < width_t):
            rows = torch.arange(width_s) if features is None else features.cpu()
            with torch.no_grad():
                for lin in (self.embedding, self.hidden):
                    lin.weight.zero_()
                    lin.weight[rows, torch.arange(width_s)] = 1.0
                    lin.bias.zero_()


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
    data: Sequence[Encoded] = (),
    pad_id: int = 0,
) -> Student:
    """The student and its projections on `device`, from `state` when resuming.

    `data`: training rows, a few seeded batches of which rank the teacher's features when a
    narrower student is sliced by importance (not when resuming: `state` replaces them).
    """
    # A forked, fixed seed: the student is the same whether built at the start or on resume.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        calibration = (
            calibration_batches(data, pad_id=pad_id, seed=config.seed) if state is None else []
        )
        model, features = _build(
            config,
            teacher=teacher,
            init_model=init_model,
            init_checkpoint=init_checkpoint,
            calibration=calibration,
        )
        if vocab.kept_ids is not None:
            shrink_embeddings(model, vocab.kept_ids)
        t_cfg, s_cfg = teacher.model.config, model.config
        projections = Projections(
            s_cfg.hidden_size, t_cfg.hidden_size, identity=features is not None, features=features
        )
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
    calibration: Sequence[Batch] = (),
) -> PreTrainedModel:
    """The student, initialised per `config.student.init`; call under a seeded RNG.

    `init_model` is where the caller found the config's init_model (the config's own value
    when None); `init_checkpoint` is another run's checkpoint file, whose student weights win
    over any init; `calibration`: batches that rank the teacher's features for
    select="importance" (without any, the first features are kept).
    """
    return _build(
        config,
        teacher=teacher,
        init_model=init_model,
        init_checkpoint=init_checkpoint,
        calibration=calibration,
    )[0]


def _build(
    config: DistillConfig,
    *,
    teacher: Teacher,
    init_model: str | None,
    init_checkpoint: Path | None,
    calibration: Sequence[Batch],
) -> tuple[PreTrainedModel, Tensor | None]:
    """The student, and the teacher residual features it kept when it was copied or sliced."""
    s = config.student
    if init_checkpoint is None and s.init == "checkpoint" and s.init_model is not None:
        init_checkpoint = Path(s.init_model)  # a config from before init_checkpoint existed
    if init_checkpoint is None and s.init == "model":
        return _from_model(init_model or s.init_model, teacher=teacher), None

    t_cfg = teacher.model.config
    dims = s.dims()
    cfg = copy.deepcopy(t_cfg)
    cfg.num_hidden_layers = dims.num_layers
    cfg.hidden_size = dims.hidden_size
    cfg.num_attention_heads = (
        _checkpoint_heads(init_checkpoint, dims.hidden_size, default=dims.num_attention_heads)
        if init_checkpoint is not None
        else student_heads(s, t_cfg)
    )
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
        return student, None
    init = effective_init(
        s.init, teacher=t_cfg, hidden=dims.hidden_size, intermediate=dims.intermediate_size
    )
    if init not in ("teacher_layers", "teacher_select"):
        return student, None
    _check_fits(init, teacher=t_cfg, hidden=dims.hidden_size, inner=dims.intermediate_size)
    mapping = layer_map(
        config.distillation.layer_map,
        teacher_layers=t_cfg.num_hidden_layers,
        student_layers=dims.num_layers,
    )
    scores = None
    if s.select == "importance" and calibration and init == "teacher_select":
        scores = measure_importance(teacher.model, calibration, mapping)
    index = copy_teacher_layers(
        student, teacher.model, mapping, copy_head=teacher.has_head, importance=scores
    )
    return student, index.hidden


def student_heads(s: StudentConfig, teacher: PretrainedConfig) -> int:
    """The student's head count: the configured one, except that a student copied or sliced
    from the teacher whose count comes from its preset keeps whole teacher heads,
    hidden / the teacher's head width, when that divides (a 128-wide student of a 12 x 32
    teacher: 4 heads of 32, where the preset's 2 of 64 would each mix two teacher heads)."""
    dims = s.dims()
    if s.num_attention_heads is not None:
        return dims.num_attention_heads
    init = effective_init(
        s.init, teacher=teacher, hidden=dims.hidden_size, intermediate=dims.intermediate_size
    )
    t_width = int(teacher.hidden_size) // int(teacher.num_attention_heads)
    if init not in ("teacher_layers", "teacher_select") or dims.hidden_size % t_width:
        return dims.num_attention_heads
    return dims.hidden_size // t_width


def with_student_heads(config: DistillConfig, teacher: PretrainedConfig) -> DistillConfig:
    """`config` with the head count the student is built with written out, so the resolved
    config (the job row, the checkpoint) says it; a no-op for students not taken from the
    teacher."""
    s = config.student
    if s.init in ("model", "checkpoint"):
        return config
    heads = student_heads(s, teacher)
    if heads == s.dims().num_attention_heads:
        return config
    student = s.model_copy(update={"num_attention_heads": heads})
    return config.model_copy(update={"student": student})


def _checkpoint_heads(path: Path, hidden: int, *, default: int) -> int:
    """The head count of the student saved in another run's checkpoint: its resolved config
    says it (a sliced student may have more heads than its preset); `default` when it cannot
    or names another width (the shape check that follows says what is wrong)."""
    try:
        saved = DistillConfig.model_validate_json(load_file(path).config_json).student.dims()
    except ValueError:
        return default
    return saved.num_attention_heads if saved.hidden_size == hidden else default


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
