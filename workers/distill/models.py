"""Teacher loading, student construction (presets, init), layer maps, projections, q/k/v capture."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from contract.config import DistillConfig
from contract.vocab import SUPPORTED_MODEL_TYPES, Task

from .errors import DistillError

_LOAD = {"trust_remote_code": False}


@dataclass
class Teacher:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]  # class names in the order of the logits; [] for regression and general
    has_head: bool  # False => the head is new and the teacher is fine-tuned first


def load_teacher(source: str, *, task: Task, train_labels: Sequence[str]) -> Teacher:
    """Load a BERT-family teacher; its label order wins when its head already knows the labels."""
    config = _load_config(source, code="teacher_not_found", what="teacher")
    model_type = getattr(config, "model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise DistillError(
            "teacher_unsupported",
            f"teacher model_type {model_type!r} is not one of {sorted(SUPPORTED_MODEL_TYPES)}",
        )
    labels, has_head = _head_fit(config, task=task, train_labels=train_labels)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **_LOAD)
    except (OSError, ValueError, TypeError) as exc:
        raise DistillError("teacher_not_found", f"no tokenizer at {source!r}: {exc}") from exc
    model = _load_model(source, task=task, labels=labels, code="teacher_not_found")
    return Teacher(model=model, tokenizer=tokenizer, labels=labels, has_head=has_head)


def load_task_model(source: str, *, task: Task, labels: Sequence[str]) -> PreTrainedModel:
    """Reload a model this engine saved (a fine-tuned teacher)."""
    return _load_model(source, task=task, labels=list(labels), code="teacher_not_found")


def _load_config(source: str, *, code: str, what: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(source, **_LOAD)
    except (OSError, ValueError, KeyError) as exc:
        raise DistillError(code, f"cannot load {what} {source!r}: {exc}") from exc


def _load_model(source: str, *, task: Task, labels: list[str], code: str) -> PreTrainedModel:
    kwargs: dict[str, Any] = {**_LOAD, "use_safetensors": True}
    try:
        if task == "general":
            return AutoModel.from_pretrained(source, **kwargs)
        kwargs.update(_head_kwargs(task, labels))
        return AutoModelForSequenceClassification.from_pretrained(
            source, ignore_mismatched_sizes=True, **kwargs
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DistillError(code, f"cannot load model {source!r}: {exc}") from exc


def _head_kwargs(task: Task, labels: Sequence[str]) -> dict[str, Any]:
    if task == "regression":
        return {"num_labels": 1, "problem_type": "regression"}
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
        "problem_type": "single_label_classification",
    }


def _head_fit(
    config: PretrainedConfig, *, task: Task, train_labels: Sequence[str]
) -> tuple[list[str], bool]:
    """(label order, whether the saved head already predicts these labels)."""
    archs = getattr(config, "architectures", None) or []
    has_cls = any(a.endswith("ForSequenceClassification") for a in archs)
    if task == "general":
        return [], False
    if task == "regression":
        return [], has_cls and config.num_labels == 1
    labels = sorted(set(train_labels))
    if not has_cls or config.num_labels != len(labels):
        return labels, False
    id2label: dict[Any, Any] = dict(config.id2label or {})
    names = [str(id2label.get(i, id2label.get(str(i)))) for i in range(config.num_labels)]
    if set(names) == set(labels):
        return names, True
    # An unnamed head (LABEL_0..) of the right size is taken to follow sorted label order.
    if all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return labels, True
    return labels, False


# --- layer maps ---


def layer_map(kind: str | Sequence[int], *, teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer (1-based) matched to each student layer m = 1..M; layer 0 is the embedding.

    uniform: g(m) = round(m * N / M), halves up, so the last student layer meets the last
    teacher layer for any N and M. top: the last M teacher layers. bottom: the first M.
    """
    n, m = teacher_layers, student_layers
    if isinstance(kind, str):
        if kind == "uniform":
            return [max(1, min(n, math.floor(i * n / m + 0.5))) for i in range(1, m + 1)]
        if kind in ("top", "bottom"):
            if m > n:
                raise DistillError(
                    "config_invalid",
                    f"layer_map {kind!r} needs a student ({m} layers) no deeper than the "
                    f"teacher ({n} layers)",
                )
            return list(range(n - m + 1, n + 1)) if kind == "top" else list(range(1, m + 1))
        raise DistillError("config_invalid", f"unknown layer_map {kind!r}")
    explicit = list(kind)
    if len(explicit) != m or not all(1 <= g <= n for g in explicit):
        raise DistillError(
            "config_invalid",
            f"layer_map {explicit} must list {m} teacher layers, each in 1..{n}",
        )
    return explicit


# --- student ---


def student_dims_of(config: PretrainedConfig) -> tuple[int, int, int, int]:
    return (
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
    )


def build_student(
    config: DistillConfig,
    *,
    teacher: Teacher,
    task: Task,
    labels: Sequence[str],
) -> PreTrainedModel:
    """The student, initialised per `config.student.init`; call under a seeded RNG."""
    s = config.student
    if s.init == "model":
        assert s.init_model is not None  # the config validator guarantees it
        init_config = _load_config(s.init_model, code="student_init_not_found", what="init_model")
        if getattr(init_config, "model_type", "") not in SUPPORTED_MODEL_TYPES:
            raise DistillError(
                "student_init_unsupported",
                f"init_model type {init_config.model_type!r} is not BERT-family",
            )
        model = _load_model(
            s.init_model, task=task, labels=list(labels), code="student_init_not_found"
        )
        return model

    t_cfg = teacher.model.config
    dims = s.dims()
    cfg = copy.deepcopy(t_cfg)
    cfg.num_hidden_layers = dims.num_layers
    cfg.hidden_size = dims.hidden_size
    cfg.num_attention_heads = dims.num_attention_heads
    cfg.intermediate_size = dims.intermediate_size
    cfg.architectures = None
    if task != "general":
        for key, value in _head_kwargs(task, labels).items():
            setattr(cfg, key, value)
    model_cls = AutoModel if task == "general" else AutoModelForSequenceClassification
    student = model_cls.from_config(cfg)

    same_width = (t_cfg.hidden_size, t_cfg.intermediate_size) == (
        dims.hidden_size,
        dims.intermediate_size,
    )
    if s.init == "checkpoint":
        assert s.init_model is not None  # the config validator guarantees it
        load_checkpoint_student(student, s.init_model)
        return student
    init = effective_init(
        s.init, teacher=t_cfg, hidden=dims.hidden_size, intermediate=dims.intermediate_size
    )
    if init in ("teacher_layers", "teacher_select"):
        if init == "teacher_layers" and not same_width:
            raise DistillError(
                "student_init_invalid",
                "init='teacher_layers' needs the teacher's hidden and intermediate sizes "
                f"({t_cfg.hidden_size}, {t_cfg.intermediate_size}); the student has "
                f"({dims.hidden_size}, {dims.intermediate_size}); init='teacher_select' "
                "slices a narrower student out of them",
            )
        if dims.hidden_size > t_cfg.hidden_size or dims.intermediate_size > t_cfg.intermediate_size:
            raise DistillError(
                "student_init_invalid",
                f"init='{init}' needs a student no wider than the teacher "
                f"(hidden {t_cfg.hidden_size}, intermediate {t_cfg.intermediate_size}); the "
                f"student has ({dims.hidden_size}, {dims.intermediate_size})",
            )
        mapping = layer_map(
            config.distillation.layer_map,
            teacher_layers=t_cfg.num_hidden_layers,
            student_layers=dims.num_layers,
        )
        copy_teacher_layers(student, teacher.model, mapping, copy_head=teacher.has_head)
    return student


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


def load_checkpoint_student(student: PreTrainedModel, path: str) -> None:
    """Start from another run's checkpointed student: every tensor whose name and shape match.
    A task head for other labels starts fresh; any other mismatch is an error."""
    from .checkpoint import load_file

    state = load_file(Path(path)).student
    if state is None:
        raise DistillError("checkpoint_mismatch", f"{path} holds no student weights yet")
    own = student.state_dict()
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
    hidden = torch.arange(s_cfg.hidden_size)
    heads = _head_indices(t_cfg, s_cfg)
    inner = torch.arange(s_cfg.intermediate_size)
    s_base: Any = student.base_model
    t_base: Any = teacher.base_model
    with torch.no_grad():
        _select_into(s_base.embeddings, t_base.embeddings, hidden=hidden, heads=heads, inner=inner)
        s_layers, t_layers = encoder_layers(student), encoder_layers(teacher)
        for m, g in enumerate(mapping):
            _select_into(s_layers[m], t_layers[g - 1], hidden=hidden, heads=heads, inner=inner)
        if (
            getattr(s_base, "pooler", None) is not None
            and getattr(t_base, "pooler", None) is not None
        ):
            _select_into(s_base.pooler, t_base.pooler, hidden=hidden, heads=heads, inner=inner)
        s_head, t_head = _head(student), _head(teacher)
        if copy_head and s_head is not None and t_head is not None:
            s_sd, t_sd = s_head.state_dict(), t_head.state_dict()
            if s_sd.keys() == t_sd.keys() and all(
                s_sd[k].dim() == t_sd[k].dim()
                and all(
                    a == b or a == len(hidden)
                    for a, b in zip(s_sd[k].shape, t_sd[k].shape, strict=True)
                )
                for k in s_sd
            ):
                _select_into(s_head, t_head, hidden=hidden, heads=heads, inner=inner)


def _head_indices(t_cfg: PretrainedConfig, s_cfg: PretrainedConfig) -> Tensor:
    """Which of the teacher's attention features (heads x head_dim) each student feature takes."""
    t_dim = t_cfg.hidden_size // t_cfg.num_attention_heads
    s_dim = s_cfg.hidden_size // s_cfg.num_attention_heads
    if t_cfg.num_attention_heads == s_cfg.num_attention_heads and s_dim <= t_dim:
        return torch.cat(
            [h * t_dim + torch.arange(s_dim) for h in range(s_cfg.num_attention_heads)]
        )
    return torch.arange(s_cfg.hidden_size)


def _select_into(
    student: nn.Module, teacher: nn.Module, *, hidden: Tensor, heads: Tensor, inner: Tensor
) -> None:
    """Copy each of `teacher`'s tensors into `student`'s, sliced where the student is smaller."""
    t_sd = teacher.state_dict()
    out: dict[str, Tensor] = {}
    for name, s_t in student.state_dict().items():
        t = t_sd[name]
        for axis, size in enumerate(s_t.shape):
            if t.shape[axis] == size:
                continue
            index = hidden
            if axis == 0 and re.search(r"attention\.self\.(query|key|value)\.", name):
                index = heads
            elif axis == 1 and name.endswith("attention.output.dense.weight"):
                index = heads
            elif (axis == 0 and name.startswith("intermediate.dense.")) or (
                axis == 1 and name == "output.dense.weight"
            ):
                index = inner
            t = t.index_select(axis, index.to(t.device))
        out[name] = t.clone()
    student.load_state_dict(out)


def _head(model: PreTrainedModel) -> nn.Module | None:
    head = getattr(model, "classifier", None)
    return head if isinstance(head, nn.Module) else None


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    base: Any = model.base_model
    layers = base.encoder.layer
    assert isinstance(layers, nn.ModuleList)
    return layers


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- projections and captured attention inputs ---


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


class QKVCapture:
    """Forward hooks on chosen layers' attention query/key(/value) Linears.

    SDPA and flash attention return no scores, so the scores are rebuilt from the captured
    (b, L, H*d) projections: exact, and free of the attention implementation in use.
    """

    def __init__(self, model: PreTrainedModel, layers: Sequence[int], *, values: bool) -> None:
        self.outputs: dict[tuple[int, str], Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        mods = encoder_layers(model)
        names = ("query", "key", "value") if values else ("query", "key")
        for i in sorted(set(layers)):
            attn: Any = mods[i].attention.self  # type: ignore[union-attr]
            for name in names:
                self._handles.append(getattr(attn, name).register_forward_hook(self._hook(i, name)))

    def _hook(self, layer: int, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            self.outputs[(layer, name)] = output

        return hook

    def get(self, layer: int, name: str) -> Tensor:
        return self.outputs[(layer, name)]

    def clear(self) -> None:
        self.outputs = {}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


# --- vocabulary trimming ---


def trim_tokenizer(
    tokenizer: PreTrainedTokenizerBase, used_ids: set[int]
) -> tuple[PreTrainedTokenizerBase, list[int]]:
    """A WordPiece tokenizer keeping only `used_ids` and the special tokens; (new, kept old ids).

    Greedy longest-match WordPiece splits every word it saw the same way with the smaller
    vocabulary (each piece it picked is kept, longer ones never existed), so the teacher's ids
    map one-to-one onto the student's on the training data; unseen words may become [UNK].
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    if model.get("type") != "WordPiece":
        raise DistillError(
            "trim_vocab_unsupported",
            f"vocabulary trimming supports WordPiece tokenizers, not {model.get('type')}",
        )
    specials = set(tokenizer.all_special_ids)
    kept = sorted(used_ids | specials)
    old_vocab: dict[str, int] = model["vocab"]
    by_id = {i: tok for tok, i in old_vocab.items()}
    remap = {old: new for new, old in enumerate(kept)}
    model["vocab"] = {by_id[old]: new for old, new in remap.items()}
    for added in state.get("added_tokens", []):
        added["id"] = remap.get(added["id"], added["id"])
    post = state.get("post_processor") or {}
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [remap[i] for i in special["ids"]]
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(json.dumps(state))
    init_kwargs = {
        k: getattr(tokenizer, k)
        for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
        if getattr(tokenizer, k, None) is not None
    }
    trimmed = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=tokenizer.model_max_length, **init_kwargs
    )
    return trimmed, kept


def shrink_embeddings(model: PreTrainedModel, kept_ids: Sequence[int]) -> None:
    """Keep only the word-embedding rows of `kept_ids`, in that order."""
    old = model.get_input_embeddings()
    assert isinstance(old, nn.Embedding)
    index = torch.tensor(list(kept_ids), dtype=torch.long)
    new = nn.Embedding(len(kept_ids), old.embedding_dim, padding_idx=None)
    with torch.no_grad():
        new.weight.copy_(old.weight[index])
    model.set_input_embeddings(new)
    model.config.vocab_size = len(kept_ids)
    for attr in ("pad_token_id",):
        old_id = getattr(model.config, attr, None)
        if old_id is not None:
            ids = list(kept_ids)
            setattr(model.config, attr, ids.index(old_id) if old_id in ids else None)
