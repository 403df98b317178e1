"""The student: its shape, its first weights (random, teacher layers, weight selection, another
model or another run's checkpoint) and the projections W_e and W_h."""

from __future__ import annotations

import copy
import random
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

from contract.config import DistillConfig, StudentConfig
from contract.vocab import SUPPORTED_MODEL_TYPES

from .checkpoint import Checkpoint, load_file
from .data import Batch, Encoded, collate
from .errors import DistillError
from .features import on_device
from .layer_map import encoder_layers, layer_map
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


# --- weight selection ----------------------------------------------------------------------------


# How many training rows rank the teacher's features: enough for stable means, a fraction of a
# second of teacher forwards on a CPU (Minitron, below, calibrates on 1024 samples of a far
# larger model).
CALIBRATION_ROWS = 256
CALIBRATION_BATCH = 32


def calibration_batches(
    data: Sequence[Encoded], *, pad_id: int, seed: int, rows: int = CALIBRATION_ROWS
) -> list[Batch]:
    """A seeded sample of `data` (datasets often come sorted by label), in padded batches."""
    if not data:
        return []
    picked = sorted(random.Random(seed).sample(range(len(data)), min(rows, len(data))))
    chosen = [data[i] for i in picked]
    return [
        collate(chosen[i : i + CALIBRATION_BATCH], pad_id=pad_id)
        for i in range(0, len(chosen), CALIBRATION_BATCH)
    ]


@dataclass(frozen=True)
class Importance:
    """Per-feature scores of the teacher: higher is kept first."""

    hidden: Tensor  # (hidden_t,) residual-stream features, one ranking for every layer
    heads: list[Tensor]  # per teacher layer, (heads_t,)
    inner: list[Tensor]  # per teacher layer, (intermediate_t,)


def measure_importance(
    teacher: PreTrainedModel, batches: Sequence[Batch], mapping: Sequence[int]
) -> Importance:
    """Activation-based importance on a few batches, forward passes only.

    As Minitron does (Muralidharan et al., "Compact Language Models via Pruning and Knowledge
    Distillation", 2024, sec. 2.2): a residual feature scores the mean |value| of its
    LayerNorm output (the embeddings' and each kept layer's), a feed-forward unit the mean
    |activation| of its layer's intermediate output, and a head the mean L2 norm of what it
    adds to the residual stream, its context vectors times its slice of the output projection
    (the norm-based view of attention of Kobayashi et al., EMNLP 2020; Michel et al., "Are
    Sixteen Heads Really Better than One?", 2019, score heads by a gradient instead, which
    needs labels a task "general" job does not have). Means are over real (unpadded) tokens.
    """
    cfg = teacher.config
    n_heads = int(cfg.num_attention_heads)
    layers = encoder_layers(teacher)
    hidden = torch.zeros(cfg.hidden_size, dtype=torch.float64)
    heads = [torch.zeros(n_heads, dtype=torch.float64) for _ in layers]
    inner = [torch.zeros(cfg.intermediate_size, dtype=torch.float64) for _ in layers]
    mask: list[Tensor] = []  # the current batch's (batch, seq, 1) real-token mask

    def masked_sum(x: Tensor) -> Tensor:
        return (x.float() * mask[0]).sum(dim=(0, 1)).double().cpu()

    def on_inner(i: int) -> Any:
        def hook(_module: nn.Module, _args: Any, out: Tensor) -> None:
            inner[i] += masked_sum(out.abs())

        return hook

    def on_context(i: int, dense: Any) -> Any:
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            context = args[0].float()  # (batch, seq, heads * head_dim)
            b, t, _ = context.shape
            w = dense.weight.float().view(dense.out_features, n_heads, -1)
            per_head = torch.einsum("bthd,khd->bthk", context.view(b, t, n_heads, -1), w)
            heads[i] += masked_sum(per_head.norm(dim=-1))

        return hook

    handles = []
    layer: Any
    for i, layer in enumerate(layers):
        handles.append(layer.intermediate.register_forward_hook(on_inner(i)))
        dense = layer.attention.output.dense
        handles.append(dense.register_forward_pre_hook(on_context(i, dense)))
    was_training = teacher.training
    device = next(teacher.parameters()).device
    tokens = 0
    base: Any = teacher.base_model
    try:
        teacher.train(False)
        with torch.no_grad():
            for batch in batches:
                on = {k: batch[k].to(device) for k in ("input_ids", "token_type_ids")}
                attention = batch["attention_mask"].to(device)
                mask[:] = [attention.unsqueeze(-1).float()]
                out = base(**on, attention_mask=attention, output_hidden_states=True)
                for g in (0, *mapping):
                    hidden += masked_sum(out.hidden_states[g].abs())
                tokens += int(attention.sum())
    finally:
        for h in handles:
            h.remove()
        teacher.train(was_training)
    n = max(tokens, 1)
    return Importance(hidden / n, [h / n for h in heads], [u / n for u in inner])


def _top(scores: Tensor | None, k: int) -> Tensor:
    """The k best-scored positions in increasing order (the first k without scores); ties go
    to the lower position, so equal scores keep the first ones."""
    if scores is None:
        return torch.arange(k)
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:k].sort().values


def copy_teacher_layers(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    mapping: Sequence[int],
    *,
    copy_head: bool,
    importance: Importance | None = None,
) -> _Index:
    """Embeddings, pooler, head and student layer m <- teacher layer mapping[m-1]; returns the
    teacher features kept (the first student layer's heads and units).

    A student as wide as the teacher gets exact copies. A narrower one gets weight selection
    (Xu et al., "Initializing Models with Larger Ones", ICLR 2024): every tensor is sliced with
    the same indices along the same kind of axis, so the residual stream keeps the same
    `hidden` teacher features everywhere, each layer's feed-forward `intermediate` of its
    teacher layer's units and `heads` of its teacher layer's heads, whole when the head widths
    match (else the first dimensions of each). Which ones: the best by `importance`, else the
    first; always in the teacher's order. A student whose heads are wider than the teacher's
    takes the first `hidden` attention features, in order.
    """
    t_cfg, s_cfg = teacher.config, student.config
    hidden = _top(None if importance is None else importance.hidden, s_cfg.hidden_size)

    def index(g: int) -> _Index:
        head_scores = None if importance is None else importance.heads[g - 1]
        inner_scores = None if importance is None else importance.inner[g - 1]
        return _Index(
            hidden=hidden,
            heads=_head_indices(t_cfg, s_cfg, head_scores),
            inner=_top(inner_scores, s_cfg.intermediate_size),
        )

    s_base: Any = student.base_model
    t_base: Any = teacher.base_model
    first = index(mapping[0])
    with torch.no_grad():
        _select_into(s_base.embeddings, t_base.embeddings, first)
        s_layers, t_layers = encoder_layers(student), encoder_layers(teacher)
        for m, g in enumerate(mapping):
            _select_into(s_layers[m], t_layers[g - 1], index(g))
        if (
            getattr(s_base, "pooler", None) is not None
            and getattr(t_base, "pooler", None) is not None
        ):
            _select_into(s_base.pooler, t_base.pooler, first)
        s_head, t_head = _head(student), _head(teacher)
        if copy_head and s_head is not None and t_head is not None:
            if _sliceable(s_head.state_dict(), t_head.state_dict(), len(hidden)):
                _select_into(s_head, t_head, first)
    return first


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


def _head_indices(
    t_cfg: PretrainedConfig, s_cfg: PretrainedConfig, scores: Tensor | None = None
) -> Tensor:
    """Which of the teacher's attention features (heads x head_dim) each student feature takes:
    the best-scored (else first) heads, each its first head_dim dimensions."""
    t_heads, s_heads = t_cfg.num_attention_heads, s_cfg.num_attention_heads
    t_dim = t_cfg.hidden_size // t_heads
    s_dim = s_cfg.hidden_size // s_heads
    if s_heads <= t_heads and s_dim <= t_dim:
        kept = _top(scores, s_heads)
        return torch.cat([int(h) * t_dim + torch.arange(s_dim) for h in kept])
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
