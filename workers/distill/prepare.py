"""Before the first step: the data split and encoded, the teacher loaded, the config resolved,
augmentation, the student's vocabulary, and the stages planned from all of it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from contract.config import DistillConfig, StageConfig
from contract.records import Example
from contract.vocab import Stage

from .callbacks import Reporter
from .checkpoint import run_fingerprint
from .data import Batches, Encoded, encode, holdout
from .errors import DistillError
from .losses import NO_CLASS
from .student import with_student_heads
from .teacher import Teacher, load_teacher
from .trim_vocab import StudentVocab, student_vocab


@dataclass(frozen=True)
class Prepared:
    config: DistillConfig  # resolved: every default filled in
    teacher: Teacher
    train: list[Encoded]  # the training set as given
    # the training set plus its augmented copies (no gold label: soft targets only), what the
    # task stages train on
    task: list[Encoded]
    validation: list[Encoded]
    validation_rows: list[Example]  # as given: the export's own tokenizer encodes them again
    vocab: StudentVocab
    pad_id: int
    fingerprint: str  # resolved config + teacher + data; a checkpoint of another is refused


def prepare(
    config: DistillConfig,
    *,
    teacher_source: str,
    train: list[Example],
    validation: list[Example] | None,
    workdir: Path,
    device: torch.device,
    report: Reporter,
) -> Prepared:
    """Everything the stages share; reports the resolved config as soon as it is known."""
    if not train:
        raise DistillError("dataset_invalid", "the training set is empty")
    if not validation:
        train, validation = holdout(
            train,
            fraction=config.validation_fraction,
            seed=config.seed,
            stratify=config.task == "classification",
        )
    labels = [str(e.label) for e in train] if config.task == "classification" else []
    teacher = load_teacher(teacher_source, task=config.task, train_labels=labels)
    # augmentation reads no value that resolving fills in, and the task stages' step bounds
    # depend on how many rows it makes: resolved after it
    train_enc, task_enc, val_enc = _encode_sets(
        config, teacher, train, validation, workdir=workdir, device=device, report=report
    )
    config = config.resolved(
        num_train_examples=len(train),
        teacher_width=int(teacher.model.config.hidden_size),
        num_task_examples=len(task_enc),
    )
    config = with_student_heads(config, teacher.model.config)
    report.callbacks.on_config(config)
    return Prepared(
        config=config,
        teacher=teacher,
        train=train_enc,
        task=task_enc,
        validation=val_enc,
        validation_rows=validation,
        # from the training rows alone: a word seen only in validation must not flatter the
        # trimmed student's score
        vocab=student_vocab(teacher.tokenizer, task_enc, trim=config.student.trim_vocab),
        pad_id=int(teacher.tokenizer.pad_token_id or 0),
        fingerprint=run_fingerprint(config, teacher.model, train, validation),
    )


def _encode_sets(
    config: DistillConfig,
    teacher: Teacher,
    train: list[Example],
    validation: list[Example],
    *,
    workdir: Path,
    device: torch.device,
    report: Reporter,
) -> tuple[list[Encoded], list[Encoded], list[Encoded]]:
    """(train, train + augmented copies, validation), tokenised by the teacher's tokenizer."""
    label2id = {name: i for i, name in enumerate(teacher.labels)}

    def encoded(examples: list[Example]) -> list[Encoded]:
        return encode(
            examples,
            teacher.tokenizer,
            max_length=config.hyperparameters.max_seq_length,
            task=config.task,
            label2id=label2id,
        )

    train_enc = encoded(train)
    task_enc = train_enc
    if config.distillation.augmentation.enabled and config.task != "general":
        from .augment import augment  # loads a masked LM: only when asked for

        augmented = augment(
            train,
            config.distillation.augmentation,
            tokenizer=teacher.tokenizer,
            cache_dir=workdir / "augmentation",
            seed=config.seed,
            device=device,
            max_length=config.hyperparameters.max_seq_length,
            on_event=report.event,
        )
        # TinyBERT's copies learn from the teacher's soft targets alone: a copy that swapped
        # "good" for "bad" keeps its words, not its original's gold label
        task_enc = train_enc + [replace(e, label=no_label(config.task)) for e in encoded(augmented)]
    return train_enc, task_enc, encoded(validation)


TASK_JOB_GENERAL = (
    "intermediate losses on the training rows with the fine-tuned teacher: a warm-up before "
    "intermediate_distill, not TinyBERT's general distillation"
)


def no_label(task: str) -> int | float:
    """What an augmented copy holds for a label: hard_ce and label_mse leave such rows out."""
    return float("nan") if task == "regression" else NO_CLASS


def eval_batches(ready: Prepared, rows: list[Encoded], pad_id: int) -> Batches:
    """`rows` batched for evaluation (read with Batches.in_order)."""
    config = ready.config
    return Batches(
        rows, batch_size=config.hyperparameters.batch_size, seed=config.seed, pad_id=pad_id
    )


@dataclass(frozen=True)
class PlannedStage:
    name: Stage
    settings: StageConfig  # resolved: every field set
    data: Batches
    note: str = ""  # what the stage is, where its name could mislead; for its events

    @property
    def steps(self) -> int:
        assert self.settings.epochs is not None  # resolved
        return self.settings.epochs * len(self.data)


def plan_stages(ready: Prepared, *, pin_memory: bool = False) -> list[PlannedStage]:
    """The stages this task runs, in order; a teacher without a head for the labels gets one.
    `pin_memory`: batches in page-locked memory, for asynchronous copies to a GPU."""
    config, task = ready.config, ready.config.task
    d, hp = config.distillation, config.hyperparameters

    def stage(name: Stage, settings: StageConfig, data: list[Encoded]) -> PlannedStage:
        batches = Batches(
            data,
            batch_size=hp.batch_size,
            seed=config.seed,
            pad_id=ready.pad_id,
            pin_memory=pin_memory,
        )
        return PlannedStage(name, settings, batches)

    stages: list[PlannedStage] = []
    if task != "general" and not ready.teacher.has_head:
        stages.append(stage("teacher_finetune", d.teacher_finetune, ready.train))
    if task == "general":
        stages.append(stage("general_distill", d.general, ready.train))
    elif d.general.enabled:
        # the name is the config's; TinyBERT's general distillation needs a base teacher and a
        # general corpus (task "general"), and this is neither
        warm_up = stage("general_distill", d.general, ready.train)
        stages.append(replace(warm_up, note=TASK_JOB_GENERAL))
    if task != "general" and d.intermediate.enabled:
        stages.append(stage("intermediate_distill", d.intermediate, ready.task))
    if task != "general" and d.prediction.enabled:
        stages.append(stage("prediction_distill", d.prediction, ready.task))
    return stages
