"""The run, read top to bottom: prepare the data and the teacher, plan the stages, train each stage
(resuming where a checkpoint left off, stopping when asked), then evaluate and export.

    run
    ├─ prepare, plan_stages              prepare.py
    ├─ for each stage
    │   ├─ finetune_step | distill_step  steps.py: a table of loss terms
    │   └─ train_stage                   AdamW, transformers' scheduler, checkpoints, stop polls
    └─ finish                            finish.py: evaluation, latency, export, metrics.json
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

from contract.config import DistillConfig
from contract.records import Example

from . import checkpoint as ckpt
from .callbacks import Callbacks, Event, Progress, Reporter
from .errors import DistillError, Stopped
from .features import on_device
from .finish import RunResult, finish
from .prepare import PlannedStage, Prepared, plan_stages, prepare
from .steps import Step, distill_step, finetune_step
from .student import Student, create_student
from .teacher import reload_finetuned

__all__ = [
    "Callbacks",
    "DistillError",
    "Event",
    "Progress",
    "RunResult",
    "Stopped",
    "run",
]

# transformers' schedule names for the config's; "constant" keeps its warm-up
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
MAX_GRAD_NORM = 1.0


def run(
    config: DistillConfig,
    *,
    teacher: str,
    train: list[Example],
    validation: list[Example] | None,
    workdir: Path,
    callbacks: Callbacks,
    init_model: str | None = None,
    init_checkpoint: Path | None = None,
) -> RunResult:
    """Distil `teacher` into a student on `train`; resumes from checkpoint_dir(workdir).

    `teacher` and `init_model` are local folders (or hub ids) the caller resolved from the
    config's names; `init_checkpoint` is another run's checkpoint file to start the student from.
    """
    workdir = Path(workdir)
    report = Reporter(callbacks)
    device = pick_device(config.device)
    seed_everything(config.seed)
    ready = prepare(
        config,
        teacher_source=teacher,
        train=train,
        validation=validation,
        workdir=workdir,
        device=device,
        report=report,
    )
    stages = plan_stages(ready)
    report.total_steps = sum(s.steps for s in stages)
    checkpoints = Checkpoints(workdir, ready, report)
    resumed = checkpoints.resume()
    start = resumed.stage_index if resumed is not None else 0

    new_student = partial(
        create_student,
        ready.config,
        teacher=ready.teacher,
        vocab=ready.vocab,
        device=device,
        init_model=init_model,
        init_checkpoint=init_checkpoint,
    )

    student: Student | None = None
    for index, stage in enumerate(stages):
        state = resumed if index == start else None
        if index < start:
            if stage.name == "teacher_finetune":
                reload_finetuned(ready.teacher, ckpt.teacher_dir(workdir))
        elif stage.name == "teacher_finetune":
            finetune_teacher(index, stage, ready, checkpoints, state=state, device=device)
        else:
            student = student or new_student(state=state)
            distill(index, stage, ready, student, checkpoints, state=state, device=device)
    if student is None:  # every stage was done before this process started
        student = new_student(state=resumed)
    return finish(
        ready, student, teacher_source=teacher, workdir=workdir, device=device, report=report
    )


def finetune_teacher(
    index: int,
    stage: PlannedStage,
    ready: Prepared,
    checkpoints: Checkpoints,
    *,
    state: ckpt.Checkpoint | None,
    device: torch.device,
) -> None:
    """Give the teacher a head for the labels; saved whole for the stages after it."""
    teacher = ready.teacher
    teacher.model = on_device(teacher.model, device)
    if state is not None and state.teacher is not None:
        teacher.model.load_state_dict(state.teacher)
    step = finetune_step(teacher, device=device, bf16=ready.config.bf16)
    params = list(teacher.model.named_parameters())
    train_stage(index, stage, step, params, ready.config, checkpoints, state=state, student=None)
    teacher.has_head = True


def distill(
    index: int,
    stage: PlannedStage,
    ready: Prepared,
    student: Student,
    checkpoints: Checkpoints,
    *,
    state: ckpt.Checkpoint | None,
    device: torch.device,
) -> None:
    """One distillation stage: the student against the teacher's targets."""
    ready.teacher.model = on_device(ready.teacher.model, device)
    step = distill_step(
        stage.name, ready.config, teacher=ready.teacher, student=student, device=device
    )
    params = list(student.model.named_parameters())
    if stage.name != "prediction_distill":  # W_e and W_h serve the intermediate terms only
        params += [(f"projections.{n}", p) for n, p in student.projections.named_parameters()]
    train_stage(index, stage, step, params, ready.config, checkpoints, state=state, student=student)


def train_stage(
    index: int,
    stage: PlannedStage,
    step_fn: Step,
    params: Sequence[tuple[str, nn.Parameter]],
    config: DistillConfig,
    checkpoints: Checkpoints,
    *,
    state: ckpt.Checkpoint | None,
    student: Student | None,
) -> None:
    """The loop: optimizer steps from where `state` left off to the stage's end."""
    optimizer, scheduler = make_optimizer(stage, params, config.hyperparameters.weight_decay)
    step = resume_stage(state, optimizer, scheduler)
    report = checkpoints.report
    report.event(
        "stage_started",
        f"{stage.name} started",
        {
            "stage": stage.name,
            "steps": stage.steps,
            "epochs": stage.settings.epochs,
            "learning_rate": stage.settings.learning_rate,
            "resumed_at_step": step,
        },
    )
    save = partial(
        checkpoints.save,
        index,
        stage=stage,
        student=student,
        optimizer=optimizer,
        scheduler=scheduler,
    )
    trainable = [p for _, p in params]
    losses: dict[str, float] = {}
    try:
        while step < stage.steps:
            epoch, first = divmod(step, len(stage.data))
            for batch in stage.data.epoch(stream=index, epoch=epoch, start=first):
                losses = optimizer_step(step_fn(batch), optimizer, scheduler, trainable)
                step += 1
                log_step(report, stage, losses, scheduler, every=config.log_every_steps)
                if report.should_stop():
                    save(step)
                    raise Stopped(f"stopped at step {report.step}")
                if step < stage.steps and report.step % config.checkpoint_every_steps == 0:
                    save(step)
    finally:
        step_fn.close()  # the hooks go; the next stage sets its own
    save(step)
    report.event(
        "stage_finished",
        f"{stage.name} finished",
        {"stage": stage.name, "step": report.step, "losses": losses},
    )


def make_optimizer(
    stage: PlannedStage, params: Sequence[tuple[str, nn.Parameter]], weight_decay: float
) -> tuple[Optimizer, LRScheduler]:
    """AdamW and the stage's schedule from transformers: warm-up, then linear/cosine/constant."""
    s = stage.settings
    assert s.learning_rate is not None and s.warmup_ratio is not None and s.schedule is not None
    optimizer = AdamW(param_groups(params, weight_decay), lr=s.learning_rate)
    scheduler = get_scheduler(
        SCHEDULERS[s.schedule],
        optimizer,
        num_warmup_steps=int(s.warmup_ratio * stage.steps),
        num_training_steps=stage.steps,
    )
    return optimizer, scheduler


def resume_stage(
    state: ckpt.Checkpoint | None, optimizer: Optimizer, scheduler: LRScheduler
) -> int:
    """The optimizer steps this stage has done; their optimizer, schedule and RNG state restored."""
    if state is None:
        return 0
    if state.stage_step > 0:
        assert state.optimizer is not None and state.scheduler is not None
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
    ckpt.set_rng_state(state.rng)
    return state.stage_step


def optimizer_step(
    losses: dict[str, Tensor],
    optimizer: Optimizer,
    scheduler: LRScheduler,
    trainable: Sequence[nn.Parameter],
) -> dict[str, float]:
    """backward, clip, step; the step's loss components as numbers."""
    total = losses["total"]
    optimizer.zero_grad(set_to_none=True)
    if total.requires_grad:  # False only when every term of the stage weighs 0
        total.backward()  # type: ignore[no-untyped-call]  # unannotated in torch
    nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def log_step(
    report: Reporter,
    stage: PlannedStage,
    losses: dict[str, float],
    scheduler: LRScheduler,
    *,
    every: int,
) -> None:
    """Progress after every step, a loss event every `every` steps; a non-finite loss ends it."""
    if not math.isfinite(losses["total"]):
        raise DistillError("training_diverged", f"{stage.name}: loss is {losses['total']}")
    report.stepped(stage.name, losses, float(scheduler.get_last_lr()[0]))
    if report.step % every == 0:
        report.event(
            "loss",
            f"step {report.step}: loss {losses['total']:.4f}",
            {"stage": stage.name, "step": report.step, "losses": losses},
        )


class Checkpoints:
    """This run's checkpoints: the one to resume from, and saving the next."""

    def __init__(self, workdir: Path, ready: Prepared, report: Reporter) -> None:
        self.directory = ckpt.checkpoint_dir(workdir)
        self.teacher_dir = ckpt.teacher_dir(workdir)
        self.ready = ready
        self.report = report
        # inside every checkpoint, so that a run can be reproduced from it
        self.config_json = ready.config.model_dump_json()

    def resume(self) -> ckpt.Checkpoint | None:
        """The last checkpoint of this very run (config, teacher and data), if there is one."""
        state = ckpt.load(self.directory)
        if state is None:
            return None
        if state.fingerprint != self.ready.fingerprint:
            raise DistillError(
                "checkpoint_mismatch",
                f"{self.directory} holds a checkpoint of another config, teacher or dataset",
            )
        self.report.step = state.global_step
        self.report.event(
            "resumed",
            f"resuming at step {state.global_step}",
            {
                "stage_index": state.stage_index,
                "stage_step": state.stage_step,
                "step": state.global_step,
            },
        )
        return state

    def save(
        self,
        index: int,
        step: int,
        *,
        stage: PlannedStage,
        student: Student | None,
        optimizer: Optimizer,
        scheduler: LRScheduler,
    ) -> None:
        """A stage that is done is recorded as the next one at step 0, without optimizer state;
        a fine-tuned teacher is saved whole before any checkpoint says its stage is done."""
        done = step >= stage.steps
        finetuning = stage.name == "teacher_finetune"
        teacher = self.ready.teacher.model
        if done and finetuning:
            teacher.train(False)
            ckpt.save_model_dir(teacher, self.teacher_dir)
        state = ckpt.Checkpoint(
            fingerprint=self.ready.fingerprint,
            config_json=self.config_json,
            stage_index=index + 1 if done else index,
            stage_step=0 if done else step,
            global_step=self.report.step,
            student=ckpt.cpu_state(student.model) if student is not None else None,
            projections=ckpt.cpu_state(student.projections) if student is not None else None,
            teacher=ckpt.cpu_state(teacher) if finetuning and not done else None,
            optimizer=None if done else optimizer.state_dict(),
            scheduler=None if done else scheduler.state_dict(),
            rng=ckpt.rng_state(),
        )
        path = ckpt.save(self.directory, state)
        self.report.event(
            "checkpoint_saved",
            f"checkpoint at step {self.report.step}",
            {"step": self.report.step, "path": str(path)},
        )


def param_groups(
    named: Sequence[tuple[str, nn.Parameter]], weight_decay: float
) -> list[dict[str, Any]]:
    """No decay on biases and LayerNorm weights (BERT's recipe)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in named:
        if not p.requires_grad:
            continue
        exempt = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        (no_decay if exempt else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DistillError(
                "device_unavailable", "device 'cuda' requested but no GPU is visible"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
