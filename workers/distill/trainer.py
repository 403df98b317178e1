"""The run, read top to bottom: prepare the data and the teacher, plan the stages, train each stage
(resuming where a checkpoint left off, stopping when asked), then evaluate and export.

    run
    ├─ prepare, plan_stages              prepare.py
    ├─ for each stage
    │   ├─ finetune_step | distill_step  steps.py: a table of loss terms
    │   │   └─ teacher targets           teacher_cache.py: computed once per stage, not per step
    │   └─ train_stage                   fused AdamW, transformers' scheduler, checkpoints;
    │                                    losses synced and stop polled in bursts (steplog.py);
    │                                    the embedding trained on its used rows (used_rows.py)
    ├─ a collapsed student               guard.py: the task stages again, longer (a rung)
    └─ finish                            finish.py: evaluation, latency, export, metrics.json
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import PreTrainedModel, get_scheduler

from contract.config import DistillConfig
from contract.records import Example

from . import checkpoint as ckpt
from .callbacks import Callbacks, Event, Progress, Reporter
from .errors import DistillError, Stopped
from .features import on_device
from .finish import RunResult, finish
from .guard import CollapseGuard
from .precision import use_bf16
from .prepare import PlannedStage, Prepared, plan_stages, prepare
from .steplog import StepLog, StopPoll
from .steps import Step, distill_step, finetune_step
from .student import Student, create_student
from .teacher import reload_finetuned
from .teacher_cache import TeacherCache, stage_cache
from .used_rows import UsedRows, attach_used_rows

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
# should_stop() is a database read in the service: asked at most this often (and at every
# checkpoint), so a cancel takes effect within about a second plus one step
STOP_POLL_S = 1.0
# Train the word embedding on the rows the stage's data uses (used_rows.py): the same updates as
# the dense table within float rounding, without updating ~30k untouched rows every step.
USED_ROWS = True


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
    stop_poll_s: float = STOP_POLL_S,
) -> RunResult:
    """Distil `teacher` into a student on `train`; resumes from checkpoint_dir(workdir).

    `teacher` and `init_model` are local folders (or hub ids) the caller resolved from the
    config's names; `init_checkpoint` is another run's checkpoint file to start the student from.
    Progress arrives in bursts: every step, in order, with its own losses, but reported when
    should_stop() is next asked (every `stop_poll_s` seconds; 0: after every step) or a
    checkpoint is written.
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
    stages = plan_stages(ready, pin_memory=device.type == "cuda")
    report.total_steps = sum(s.steps for s in stages)
    checkpoints = Checkpoints(workdir, ready, report)
    loop = Loop(ready, checkpoints, StopPoll(report, stop_poll_s), device, workdir)
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
        data=ready.train,
        pad_id=ready.pad_id,
    )

    guard = CollapseGuard.of(ready, stages, device, report)
    guard.restore(stages, start)  # a checkpoint inside a rung: the rungs, planned again

    student: Student | None = None
    index = 0
    while True:
        while index < len(stages):
            stage, state = stages[index], resumed if index == start else None
            if index < start:
                if stage.name == "teacher_finetune":
                    reload_finetuned(ready.teacher, ckpt.teacher_dir(workdir))
            elif stage.name == "teacher_finetune":
                finetune_teacher(loop, index, stage, state=state)
            else:
                student = student or new_student(state=state)
                distill(loop, index, stage, student, state=state)
            index += 1
        if student is None:  # every stage was done before this process started
            student = new_student(state=resumed)
        if not guard.retry(stages, student):  # collapsed: the next rung joins `stages`
            break
    return finish(
        ready,
        student,
        teacher_source=teacher,
        workdir=workdir,
        device=device,
        report=report,
        collapse_guard=guard.summary() if guard.active else None,
    )


@dataclass(frozen=True)
class Loop:
    """What every stage of one run shares."""

    ready: Prepared
    checkpoints: Checkpoints
    poll: StopPoll
    device: torch.device
    workdir: Path

    @property
    def bf16(self) -> bool:
        return use_bf16(self.ready.config, self.device)


def finetune_teacher(
    loop: Loop, index: int, stage: PlannedStage, *, state: ckpt.Checkpoint | None
) -> None:
    """Give the teacher a head for the labels; saved whole for the stages after it."""
    teacher = loop.ready.teacher
    teacher.model = on_device(teacher.model, loop.device)
    if state is not None and state.teacher is not None:
        teacher.model.load_state_dict(state.teacher)
    step = finetune_step(teacher, device=loop.device, bf16=loop.bf16)
    params = list(teacher.model.named_parameters())
    rows = used_rows(teacher.model, stage, pad_id=loop.ready.pad_id)
    train_stage(loop, index, stage, step, params, state=state, student=None, rows=rows)
    teacher.has_head = True


def distill(
    loop: Loop,
    index: int,
    stage: PlannedStage,
    student: Student,
    *,
    state: ckpt.Checkpoint | None,
) -> None:
    """One distillation stage: the student against the teacher's targets, computed once."""
    ready = loop.ready
    ready.teacher.model = on_device(ready.teacher.model, loop.device)
    assert stage.settings.epochs is not None  # resolved
    cache = stage_cache(
        ready.config.distillation.teacher_cache,
        data=stage.data.data,
        epochs=stage.settings.epochs,
        bf16=loop.bf16,
        folder=loop.workdir / "teacher-cache",
        name=f"{stage.name}-{ready.fingerprint[:16]}",
        key=f"{ready.fingerprint}:{index}",
        pad_id=ready.pad_id,
        batch_size=stage.data.batch_size,
        labels=max(1, len(ready.teacher.labels)),
    )
    step = distill_step(
        stage.name,
        ready.config,
        teacher=ready.teacher,
        student=student,
        device=loop.device,
        cache=cache,
    )
    params = list(student.model.named_parameters())
    if stage.name != "prediction_distill":  # W_e and W_h serve the intermediate terms only
        params += [(f"projections.{n}", p) for n, p in student.projections.named_parameters()]
    rows = used_rows(student.model, stage, pad_id=ready.pad_id, input_map=student.vocab.input_map)
    train_stage(loop, index, stage, step, params, state=state, student=student, rows=rows)
    if isinstance(step.teacher, TeacherCache):
        step.teacher.drop()  # the stage is done: its memory and its file go


def train_stage(
    loop: Loop,
    index: int,
    stage: PlannedStage,
    step_fn: Step,
    params: Sequence[tuple[str, nn.Parameter]],
    *,
    state: ckpt.Checkpoint | None,
    student: Student | None,
    rows: UsedRows | None = None,
) -> None:
    """The loop: optimizer steps from where `state` left off to the stage's end."""
    config, report, poll = loop.ready.config, loop.checkpoints.report, loop.poll
    if rows is not None:
        params = rows.swap(params)
    optimizer, scheduler = make_optimizer(stage, params, config.hyperparameters.weight_decay)
    step = resume_stage(state, optimizer, scheduler)
    started(loop, index, stage, step)
    checkpoint = partial(
        loop.checkpoints.save,
        index,
        stage=stage,
        student=student,
        optimizer=optimizer,
        scheduler=scheduler,
    )

    def save(at: int) -> None:
        if rows is not None:
            rows.sync()  # the checkpoint holds the full table
        checkpoint(at)

    trainable = [p for _, p in params]
    log = StepLog(report, stage.name, every=config.log_every_steps)
    try:
        if not step_fn.prepare(poll.stopping):  # the teacher's targets, built once
            save(step)
            raise Stopped(f"stopped at step {report.step}")
        cache_report(report, stage, step_fn)
        while step < stage.steps:
            epoch, first = divmod(step, len(stage.data))
            for batch in stage.data.epoch(stream=index, epoch=epoch, start=first):
                losses = optimizer_step(step_fn(batch), optimizer, scheduler, trainable, rows)
                step += 1
                log.add(losses, float(scheduler.get_last_lr()[0]))
                due = step < stage.steps and log.global_step % config.checkpoint_every_steps == 0
                if due or poll.due():
                    log.flush()
                    if poll.ask():
                        save(step)
                        raise Stopped(f"stopped at step {report.step}")
                if due:
                    save(step)
        log.flush()
    finally:
        step_fn.close()  # the hooks go; the next stage sets its own
        if rows is not None:
            rows.detach()
    save(step)
    data: dict[str, Any] = {"stage": stage.name, "step": report.step, "losses": log.last}
    report.event("stage_finished", f"{stage.name} finished", data | cache_report_data(step_fn))


def started(loop: Loop, index: int, stage: PlannedStage, step: int) -> None:
    """The stage_started event: its plan, and the padding its batches carry."""
    epoch = min(step // len(stage.data), (stage.settings.epochs or 1) - 1)
    loop.checkpoints.report.event(
        "stage_started",
        f"{stage.name} started" + (f" ({stage.note})" if stage.note else ""),
        {
            "stage": stage.name,
            "steps": stage.steps,
            "epochs": stage.settings.epochs,
            "learning_rate": stage.settings.learning_rate,
            "resumed_at_step": step,
            "bf16": loop.bf16,
            "padding_fraction": round(stage.data.padding_fraction(stream=index, epoch=epoch), 4),
        },
    )


def cache_report(report: Reporter, stage: PlannedStage, step_fn: Step) -> None:
    """Where the teacher's targets went, their bytes and the time the pass took."""
    data = cache_report_data(step_fn)
    if not data:
        return
    summary = data["teacher_cache"]
    report.event(
        "stage_finished",
        f"teacher targets for {stage.name}: {summary['where']} ({summary['bytes']:,} bytes, "
        f"{summary['build_s']:.1f} s)",
        {"phase": "teacher_cache", "distill_stage": stage.name, **summary},
        level="warning" if summary["warning"] else "info",
    )


def cache_report_data(step_fn: Step) -> dict[str, Any]:
    if not isinstance(step_fn.teacher, TeacherCache):
        return {}
    return {"teacher_cache": step_fn.teacher.stats.summary()}


def make_optimizer(
    stage: PlannedStage, params: Sequence[tuple[str, nn.Parameter]], weight_decay: float
) -> tuple[Optimizer, LRScheduler]:
    """AdamW and the stage's schedule from transformers: warm-up, then linear/cosine/constant.

    Fused AdamW (one kernel over all tensors) where torch has it for the parameters' device:
    on a 14M-parameter student it took 28 ms a step on one CPU core, against 185 ms for the
    per-tensor loop and 155 ms for foreach.
    """
    s = stage.settings
    assert s.learning_rate is not None and s.warmup_ratio is not None and s.schedule is not None
    groups = param_groups(params, weight_decay)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for _, p in params)
    optimizer = AdamW(groups, lr=s.learning_rate, fused=fused, foreach=None if fused else True)
    scheduler = get_scheduler(
        SCHEDULERS[s.schedule],
        optimizer,
        num_warmup_steps=int(s.warmup_ratio * stage.steps),
        num_training_steps=stage.steps,
    )
    return optimizer, scheduler


def used_rows(
    model: PreTrainedModel, stage: PlannedStage, *, pad_id: int, input_map: Tensor | None = None
) -> UsedRows | None:
    """The embedding rows `stage`'s batches can reach, in `model`'s numbering (USED_ROWS)."""
    if not USED_ROWS:
        return None
    ids: list[list[int]] = [e.input_ids for e in stage.data.data]
    extra = [pad_id]
    if input_map is not None:  # a trimmed vocabulary: the student's own ids
        ids = [input_map[torch.tensor(row)].tolist() for row in ids]
        extra = [int(input_map[pad_id])]
    return attach_used_rows(model, ids, extra=extra)


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
    rows: UsedRows | None = None,
) -> dict[str, Tensor]:
    """backward, clip, step; the step's loss components, still on the device (no host sync)."""
    total = losses["total"]
    optimizer.zero_grad(set_to_none=True)
    if total.requires_grad:  # False only when every term of the stage weighs 0
        total.backward()  # type: ignore[no-untyped-call]  # unannotated in torch
    nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM, foreach=True)
    optimizer.step()
    if rows is not None:
        rows.stepped(optimizer)  # before the schedule moves: this step's rate
    scheduler.step()
    return losses


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
