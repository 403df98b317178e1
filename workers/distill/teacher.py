"""The teacher: a BERT-family model loaded with the head the task needs, and its reload after
fine-tuning. The loaders here also serve the student's init='model'."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from contract.model_files import NO_TOKENIZER, has_tokenizer, vocabulary_mismatch
from contract.vocab import SUPPORTED_MODEL_TYPES, Task

from .errors import DistillError

_LOAD = {"trust_remote_code": False}


@dataclass
class Teacher:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: Task
    labels: list[str]  # class names in the order of the logits; [] for regression and general
    has_head: bool  # False => the head is new and the teacher is fine-tuned first


def load_teacher(source: str, *, task: Task, train_labels: Sequence[str]) -> Teacher:
    """Load a BERT-family teacher; its label order wins when its head already knows the labels."""
    config = load_config(source, code="teacher_not_found", what="teacher")
    model_type = getattr(config, "model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise DistillError(
            "teacher_unsupported",
            f"teacher model_type {model_type!r} is not one of {sorted(SUPPORTED_MODEL_TYPES)}",
        )
    labels, has_head = _head_fit(config, task=task, train_labels=train_labels)
    if Path(source).is_dir() and not has_tokenizer(Path(source)):
        raise DistillError("tokenizer_missing", f"teacher {source!r}: {NO_TOKENIZER}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **_LOAD)
    except (OSError, ValueError, TypeError) as exc:
        raise DistillError("teacher_not_found", f"no tokenizer at {source!r}: {exc}") from exc
    model = load_model(source, task=task, labels=labels, code="teacher_not_found")
    check_vocabulary(tokenizer, model, what=f"teacher {source!r}")
    return Teacher(model, tokenizer, task, labels, has_head)


def check_vocabulary(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, *, what: str
) -> None:
    """A tokenizer that is not the model's (a hub repo or folder without its files gets one
    built from nothing) is an error, never a run on [UNK]s."""
    rows = int(model.config.vocab_size)  # the word embeddings' rows, as the model was saved
    if mismatch := vocabulary_mismatch(len(tokenizer), rows):
        raise DistillError("tokenizer_mismatch", f"{what}: {mismatch}")


def reload_finetuned(teacher: Teacher, directory: Path) -> None:
    """Swap in the fine-tuned teacher an earlier process saved (resuming after its stage)."""
    if not directory.exists():
        raise DistillError("checkpoint_corrupt", f"{directory} (the fine-tuned teacher) is missing")
    teacher.model = load_model(
        str(directory), task=teacher.task, labels=teacher.labels, code="teacher_not_found"
    )
    teacher.has_head = True


def load_config(source: str, *, code: str, what: str) -> PretrainedConfig:
    try:
        config: PretrainedConfig = AutoConfig.from_pretrained(source, **_LOAD)
    except (OSError, ValueError, KeyError) as exc:
        raise DistillError(code, f"cannot load {what} {source!r}: {exc}") from exc
    return config


def load_model(source: str, *, task: Task, labels: Sequence[str], code: str) -> PreTrainedModel:
    """A base model for task='general', else one with a sequence-classification head."""
    kwargs: dict[str, Any] = {**_LOAD, "use_safetensors": True}
    try:
        if task == "general":
            base: PreTrainedModel = AutoModel.from_pretrained(source, **kwargs)
            return base
        kwargs.update(head_kwargs(task, labels))
        headed: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(
            source, ignore_mismatched_sizes=True, **kwargs
        )
        return headed
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DistillError(code, f"cannot load model {source!r}: {exc}") from exc


def head_kwargs(task: Task, labels: Sequence[str]) -> dict[str, Any]:
    """The config fields of a classification or regression head."""
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
