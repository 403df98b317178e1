"""The stages and the loop: teacher fine-tuning, general/intermediate/prediction distillation,
evaluation and export, with a progress callback and a should_stop poll every optimizer step."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from contract.config import DistillConfig, StageConfig
from contract.records import Example

from . import checkpoint as ckpt_io
from . import losses as L
from .data import Batch, Batches, Encoded, collate, encode, holdout
from .errors import DistillError, Stopped
from .evaluate import (
    PRIMARY_METRIC,
    predict,
    size_on_disk,
    state_bytes,
    task_metrics,
    torch_latency,
)
from .export import export_hf, export_onnx, model_card
from .features import FeatureModel, Features, TeacherTargets
from .models import (
    Projections,
    build_student,
    count_parameters,
    effective_init,
    layer_map,
    load_task_model,
    load_teacher,
    shrink_embeddings,
    trim_tokenizer,
)

__all__ = [
    "Callbacks",
    "DistillError",
    "Event",
    "Progress",
    "RunResult",
    "Stopped",
    "run",
]


@dataclass(frozen=True)
class Progress:
    stage: str
    step: int  # global, across all stages; 1-based after the first step
    total_steps: int  # planned before training starts
    losses: dict[str, float]  # this step's components + "total"
    learning_rate: float


@dataclass(frozen=True)
class Event:
    type: str  # stage_started | stage_finished | loss | evaluation | checkpoint_saved | warning
    message: str
    data: dict[str, Any]
    level: str = "info"


class Callbacks(Protocol):
    def on_config(self, config: DistillConfig) -> None:
        """Once, after the teacher is loaded: the configuration with every default resolved."""
        ...

    def on_progress(self, p: Progress) -> None: ...
    def on_event(self, e: Event) -> None: ...
    def should_stop(self) -> bool: ...


@dataclass(frozen=True)
class RunResult:
    metrics: dict[str, Any]
    export_dir: Path
    metrics_file: Path  # the metrics as JSON, written by the engine beside export_dir
    onnx_files: list[Path] = field(default_factory=list)


STAGE_KEYS = {
    "teacher_finetune": "teacher_finetune",
    "general_distill": "general",
    "intermediate_distill": "intermediate",
    "prediction_distill": "prediction",
}
LATENCY_BATCH_SIZES = (1, 32)


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
    """Distil `teacher` into a student on `train`; resumes from workdir/checkpoints if present.

    `teacher` and `init_model` are local folders (or hub ids) the caller resolved from the
    config's names; `init_checkpoint` is another run's checkpoint file to start the student from.
    """
    # Interim shim: the engine still reads both from the config; the trainer rewrite drops this.
    if init_checkpoint is not None:
        config = config.model_copy(
            update={
                "student": config.student.model_copy(
                    update={"init": "checkpoint", "init_model": str(init_checkpoint)}
                )
            }
        )
    elif init_model is not None:
        config = config.model_copy(
            update={"student": config.student.model_copy(update={"init_model": init_model})}
        )
    return _Run(
        config,
        teacher_source=teacher,
        train=train,
        validation=validation,
        workdir=Path(workdir),
        callbacks=callbacks,
    ).execute()


@dataclass
class _Stage:
    name: str
    settings: StageConfig  # resolved: every field set
    data: Batches

    @property
    def steps(self) -> int:
        assert self.settings.epochs is not None
        return self.settings.epochs * len(self.data)


class _Run:
    def __init__(
        self,
        config: DistillConfig,
        *,
        teacher_source: str,
        train: list[Example],
        validation: list[Example] | None,
        workdir: Path,
        callbacks: Callbacks,
    ) -> None:
        self.raw_config = config
        self.teacher_source = teacher_source
        self.train_examples = list(train)
        self.val_examples = list(validation) if validation else None
        self.workdir = workdir
        self.ckpt_dir = workdir / "checkpoints"
        self.cb = callbacks
        self.task = config.task
        self.device = _pick_device(config.device)
        self.global_step = 0
        self.total_steps = 0
        self.student: PreTrainedModel | None = None
        self.projections: Projections | None = None
        self.input_map: Tensor | None = None
        self.student_tokenizer: PreTrainedTokenizerBase | None = None

    # --- orchestration ---------------------------------------------------------------------------

    def execute(self) -> RunResult:
        cfg0 = self.raw_config
        _seed_everything(cfg0.seed)
        if not self.train_examples:
            raise DistillError("dataset_invalid", "the training set is empty")
        if self.val_examples is None:
            self.train_examples, self.val_examples = holdout(
                self.train_examples,
                fraction=cfg0.validation_fraction,
                seed=cfg0.seed,
                stratify=self.task == "classification",
            )
        train_labels = (
            [str(e.label) for e in self.train_examples] if self.task == "classification" else []
        )
        if self.task == "classification" and not train_labels:
            raise DistillError("dataset_invalid", "classification needs labelled examples")
        self.teacher = load_teacher(self.teacher_source, task=self.task, train_labels=train_labels)
        self.config = cfg0.resolved(
            num_train_examples=len(self.train_examples),
            teacher_width=int(self.teacher.model.config.hidden_size),
        )
        cfg = self.config
        self.cb.on_config(cfg)
        hp = cfg.hyperparameters
        self.labels = self.teacher.labels
        self.label2id = {name: i for i, name in enumerate(self.labels)}
        self.tokenizer = self.teacher.tokenizer
        self.pad_id = int(self.tokenizer.pad_token_id or 0)

        train_enc = self._encode(self.train_examples)
        task_enc = train_enc
        if cfg.distillation.augmentation.enabled and self.task != "general":
            from .augment import augment

            augmented = augment(
                self.train_examples,
                cfg.distillation.augmentation,
                tokenizer=self.tokenizer,
                cache_dir=self.workdir / "augmentation",
                seed=cfg.seed,
                device=self.device,
                max_length=hp.max_seq_length,
                on_event=self._event,
            )
            task_enc = train_enc + self._encode(augmented)
        self.val_enc = self._encode(self.val_examples or [])

        if cfg.student.trim_vocab:
            used: set[int] = set()
            for e in (*task_enc, *self.val_enc):
                used.update(e.input_ids)
            self.student_tokenizer, kept = trim_tokenizer(self.tokenizer, used)
            table = torch.full(
                (len(self.tokenizer),), kept.index(self.tokenizer.unk_token_id), dtype=torch.long
            )
            table[torch.tensor(kept)] = torch.arange(len(kept))
            self.input_map = table
            self.kept_ids = kept
        else:
            self.student_tokenizer = self.tokenizer

        self.stages = self._plan(train_enc, task_enc)
        self.total_steps = sum(s.steps for s in self.stages)
        self.fingerprint = ckpt_io.fingerprint(
            _canonical(cfg0),
            self.teacher_source,
            _data_hash(self.train_examples, self.val_examples or []),
        )
        resumed = ckpt_io.load(self.ckpt_dir)
        start_stage, start_step = 0, 0
        if resumed is not None:
            if resumed.fingerprint != self.fingerprint:
                raise DistillError(
                    "checkpoint_mismatch",
                    f"{self.ckpt_dir} holds a checkpoint of another config, teacher or dataset",
                )
            start_stage, start_step = resumed.stage_index, resumed.stage_step
            self.global_step = resumed.global_step
            self._event(
                "resumed",
                f"resuming at step {self.global_step}",
                {"stage_index": start_stage, "stage_step": start_step, "step": self.global_step},
            )

        for index, stage in enumerate(self.stages):
            if index < start_stage:
                if stage.name == "teacher_finetune":
                    self._reload_finetuned_teacher()
                continue
            state = resumed if (resumed is not None and index == start_stage) else None
            self._run_stage(index, stage, start_step if state else 0, state)
            resumed = None

        if self.student is None:  # every stage was done before this process started
            self._ensure_student(resumed)
        return self._finish()

    def _plan(self, train_enc: list[Encoded], task_enc: list[Encoded]) -> list[_Stage]:
        cfg = self.config
        d, hp = cfg.distillation, cfg.hyperparameters

        def batches(data: list[Encoded]) -> Batches:
            return Batches(data, batch_size=hp.batch_size, seed=cfg.seed, pad_id=self.pad_id)

        stages: list[_Stage] = []
        if self.task != "general" and not self.teacher.has_head:
            stages.append(_Stage("teacher_finetune", d.teacher_finetune, batches(train_enc)))
        if self.task == "general" or d.general.enabled:
            stages.append(_Stage("general_distill", d.general, batches(train_enc)))
        if self.task != "general":
            if d.intermediate.enabled:
                stages.append(_Stage("intermediate_distill", d.intermediate, batches(task_enc)))
            if d.prediction.enabled:
                stages.append(_Stage("prediction_distill", d.prediction, batches(task_enc)))
        return stages

    def _encode(self, examples: Sequence[Example]) -> list[Encoded]:
        return encode(
            examples,
            self.tokenizer,
            max_length=self.config.hyperparameters.max_seq_length,
            task=self.task,
            label2id=self.label2id,
        )

    # --- models ----------------------------------------------------------------------------------

    def _reload_finetuned_teacher(self) -> None:
        path = self.ckpt_dir / ckpt_io.TEACHER_DIR
        if not path.exists():
            raise DistillError("checkpoint_corrupt", f"{path} (the fine-tuned teacher) is missing")
        self.teacher.model = load_task_model(str(path), task=self.task, labels=self.labels)
        self.teacher.has_head = True

    def _ensure_student(self, state: ckpt_io.Checkpoint | None) -> None:
        if self.student is not None:
            return
        cfg = self.config
        # A forked, fixed seed: the student is the same whether built at the start or on resume.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            student = build_student(cfg, teacher=self.teacher, task=self.task, labels=self.labels)
            if self.input_map is not None:
                shrink_embeddings(student, self.kept_ids)
            projections = Projections(
                student.config.hidden_size,
                self.teacher.model.config.hidden_size,
                identity=effective_init(
                    cfg.student.init,
                    teacher=self.teacher.model.config,
                    hidden=student.config.hidden_size,
                    intermediate=student.config.intermediate_size,
                )
                == "teacher_select",
            )
        self.student = student.to(self.device)  # type: ignore[arg-type]  # HF's typed .to
        self.projections = projections.to(self.device)
        if state is not None:
            self._load_student_state(state)

    def _load_student_state(self, state: ckpt_io.Checkpoint) -> None:
        assert self.student is not None and self.projections is not None
        if state.student is not None:
            self.student.load_state_dict(state.student)
        if state.projections is not None:
            self.projections.load_state_dict(state.projections)

    # --- one stage -------------------------------------------------------------------------------

    def _run_stage(
        self, index: int, stage: _Stage, start_step: int, state: ckpt_io.Checkpoint | None
    ) -> None:
        cfg = self.config
        s = stage.settings
        finetune = stage.name == "teacher_finetune"
        teacher_model = self.teacher.model.to(self.device)  # type: ignore[arg-type]
        if finetune:
            if state is not None and state.teacher is not None:
                teacher_model.load_state_dict(state.teacher)
            params = list(teacher_model.named_parameters())
            step_fn = self._finetune_step_fn(teacher_model)
            teacher_model.train()
        else:
            self._ensure_student(state)
            assert self.student is not None and self.projections is not None
            self.student.train()
            teacher_model.eval()
            named = list(self.student.named_parameters())
            if stage.name != "prediction_distill":
                named += [(f"projections.{n}", p) for n, p in self.projections.named_parameters()]
            params = named
            step_fn = self._distill_step_fn(stage.name)

        assert s.learning_rate is not None and s.warmup_ratio is not None and s.schedule is not None
        optimizer = torch.optim.AdamW(
            _param_groups(params, cfg.hyperparameters.weight_decay), lr=s.learning_rate
        )
        scheduler = LambdaLR(optimizer, _schedule(s.schedule, s.warmup_ratio, stage.steps))
        if state is not None and state.optimizer is not None and start_step > 0:
            optimizer.load_state_dict(state.optimizer)
            assert state.scheduler is not None
            scheduler.load_state_dict(state.scheduler)
        if state is not None:
            ckpt_io.set_rng_state(state.rng)

        self._event(
            "stage_started",
            f"{stage.name} started",
            {
                "stage": stage.name,
                "steps": stage.steps,
                "epochs": s.epochs,
                "learning_rate": s.learning_rate,
                "resumed_at_step": start_step,
            },
        )
        trainable = [p for _, p in params]
        per_epoch = len(stage.data)
        step = start_step
        last: dict[str, float] = {}
        while step < stage.steps:
            epoch, first = divmod(step, per_epoch)
            for batch in stage.data.epoch(stream=index, epoch=epoch, start=first):
                components = step_fn(batch)
                total = components["total"]
                optimizer.zero_grad(set_to_none=True)
                total.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                self.global_step += 1
                last = {k: float(v.detach()) for k, v in components.items()}
                if not math.isfinite(last["total"]):
                    raise DistillError(
                        "training_diverged", f"{stage.name}: loss is {last['total']}"
                    )
                self.cb.on_progress(
                    Progress(
                        stage.name,
                        self.global_step,
                        self.total_steps,
                        last,
                        float(scheduler.get_last_lr()[0]),
                    )
                )
                if self.global_step % cfg.log_every_steps == 0:
                    self._event(
                        "loss",
                        f"step {self.global_step}: loss {last['total']:.4f}",
                        {"stage": stage.name, "step": self.global_step, "losses": last},
                    )
                done = step >= stage.steps
                if self.cb.should_stop():
                    self._save(
                        index, step, optimizer, scheduler, finetune=finetune, stage_done=done
                    )
                    raise Stopped(f"stopped at step {self.global_step}")
                if not done and self.global_step % cfg.checkpoint_every_steps == 0:
                    self._save(
                        index, step, optimizer, scheduler, finetune=finetune, stage_done=False
                    )

        if finetune:
            teacher_model.eval()
            ckpt_io.save_model_dir(teacher_model, self.ckpt_dir / ckpt_io.TEACHER_DIR)
            self.teacher.has_head = True
        self._save(index, step, optimizer, scheduler, finetune=finetune, stage_done=True)
        self._event(
            "stage_finished",
            f"{stage.name} finished",
            {"stage": stage.name, "step": self.global_step, "losses": last},
        )

    def _save(
        self,
        index: int,
        step: int,
        optimizer: torch.optim.Optimizer,
        scheduler: LambdaLR,
        *,
        finetune: bool,
        stage_done: bool,
    ) -> None:
        """A stage that is done is recorded as the next one at step 0, without optimizer state."""
        if stage_done and finetune and not (self.ckpt_dir / ckpt_io.TEACHER_DIR).exists():
            self.teacher.model.eval()
            ckpt_io.save_model_dir(self.teacher.model, self.ckpt_dir / ckpt_io.TEACHER_DIR)
        state = ckpt_io.Checkpoint(
            fingerprint=self.fingerprint,
            config_json=_canonical(self.raw_config),
            stage_index=index + 1 if stage_done else index,
            stage_step=0 if stage_done else step,
            global_step=self.global_step,
            student=_cpu_state(self.student) if self.student is not None else None,
            projections=_cpu_state(self.projections) if self.projections is not None else None,
            teacher=_cpu_state(self.teacher.model) if finetune and not stage_done else None,
            optimizer=None if stage_done else optimizer.state_dict(),
            scheduler=None if stage_done else scheduler.state_dict(),
            rng=ckpt_io.rng_state(),
        )
        path = ckpt_io.save(self.ckpt_dir, state)
        self._event(
            "checkpoint_saved",
            f"checkpoint at step {self.global_step}",
            {"step": self.global_step, "path": str(path)},
        )

    # --- losses ----------------------------------------------------------------------------------

    def _finetune_step_fn(self, model: PreTrainedModel) -> Callable[[Batch], dict[str, Tensor]]:
        fm = FeatureModel(
            model, capture_layers=[], values=False, device=self.device, bf16=self.config.bf16
        )

        def step(batch: Batch) -> dict[str, Tensor]:
            out = fm(batch, hidden=False)
            assert out.logits is not None
            labels = batch["labels"].to(self.device)
            if self.task == "regression":
                loss = L.regression_mse(out.logits, labels)
            else:
                loss = L.hard_cross_entropy(out.logits, labels)
            return {"task": loss, "total": loss}

        return step

    def _distill_step_fn(self, stage_name: str) -> Callable[[Batch], dict[str, Tensor]]:
        assert self.student is not None and self.projections is not None
        cfg = self.config
        w = cfg.distillation.weights
        t_cfg, s_cfg = self.teacher.model.config, self.student.config
        mapping = layer_map(
            cfg.distillation.layer_map,
            teacher_layers=t_cfg.num_hidden_layers,
            student_layers=s_cfg.num_hidden_layers,
        )
        intermediate = stage_name != "prediction_distill"
        attention_kind = _attention_kind(
            cfg.distillation.attention_loss, t_cfg.num_attention_heads, s_cfg.num_attention_heads
        )
        relation_heads = (
            _relation_heads(cfg.distillation.relation_heads, t_cfg, s_cfg)
            if attention_kind == "relation"
            else 0
        )
        capture = intermediate and w.attention > 0
        student = FeatureModel(
            self.student,
            capture_layers=list(range(s_cfg.num_hidden_layers)) if capture else [],
            values=attention_kind == "relation",
            device=self.device,
            bf16=cfg.bf16,
            input_map=self.input_map,
        )
        teacher = TeacherTargets(
            self.teacher.model,
            capture_layers=[g - 1 for g in mapping] if capture else [],
            values=attention_kind == "relation",
            device=self.device,
            bf16=cfg.bf16,
        )
        projections = self.projections
        temperature = cfg.hyperparameters.temperature
        heads = s_cfg.num_attention_heads

        # A prediction stage whose teacher terms all weigh 0 (training on the labels alone)
        # skips the teacher's forward pass: it would cost more than the student's step.
        teacher_weight = w.regression if self.task == "regression" else w.prediction
        needs_teacher = intermediate or teacher_weight > 0

        def step(batch: Batch) -> dict[str, Tensor]:
            mask = batch["attention_mask"].to(self.device)
            f_s = student(batch, hidden=intermediate)
            f_t = teacher(batch, hidden=intermediate) if needs_teacher else None
            parts: dict[str, Tensor] = {}
            if intermediate:
                assert f_t is not None
                parts.update(
                    _intermediate_losses(
                        f_s,
                        f_t,
                        mapping,
                        mask,
                        projections,
                        attention_kind=attention_kind if capture else "none",
                        heads=heads,
                        relation_heads=relation_heads,
                    )
                )
                total = (
                    w.embedding * parts["embedding"]
                    + w.hidden * parts["hidden"]
                    + w.attention * parts.get("attention", torch.zeros((), device=mask.device))
                )
            else:
                assert f_s.logits is not None
                t_logits = f_t.logits if f_t is not None else None
                total = torch.zeros((), device=mask.device)
                if self.task == "regression":
                    if t_logits is not None:
                        parts["regression"] = L.regression_mse(f_s.logits, t_logits)
                        total = w.regression * parts["regression"]
                    if w.hard_label > 0:
                        parts["hard_label"] = L.regression_mse(
                            f_s.logits, batch["labels"].to(self.device)
                        )
                        total = total + w.hard_label * parts["hard_label"]
                else:
                    if t_logits is not None:
                        parts["prediction"] = L.soft_cross_entropy(
                            f_s.logits, t_logits, temperature
                        )
                        total = w.prediction * parts["prediction"]
                    if w.hard_label > 0:
                        parts["hard_label"] = L.hard_cross_entropy(
                            f_s.logits, batch["labels"].to(self.device)
                        )
                        total = total + w.hard_label * parts["hard_label"]
            parts["total"] = total
            return parts

        return step

    # --- evaluation and export -------------------------------------------------------------------

    def _finish(self) -> RunResult:
        assert self.student is not None
        cfg = self.config
        student, teacher = self.student.eval(), self.teacher.model.eval()
        self._progress_marker("evaluate")
        self._event("stage_started", "evaluate started", {"stage": "evaluate"})
        metrics: dict[str, Any] = {
            "parameters": {
                "teacher": count_parameters(teacher),
                "student": count_parameters(student),
            },
        }
        val = (
            Batches(
                self.val_enc,
                batch_size=cfg.hyperparameters.batch_size,
                seed=cfg.seed,
                pad_id=self.pad_id,
            )
            if self.val_enc
            else None
        )
        if self.task != "general" and val is not None:
            t_logits, gold = predict(teacher, val, device=self.device)
            s_logits, _ = predict(student, val, device=self.device, input_map=self.input_map)
            metrics["teacher"] = task_metrics(self.task, t_logits, gold)
            metrics["student"] = task_metrics(self.task, s_logits, gold)
            primary = PRIMARY_METRIC[self.task]
            t_val = metrics["teacher"][primary]
            metrics["retention"] = (
                float(metrics["student"][primary] / t_val)
                if t_val and math.isfinite(t_val)
                else None
            )
            metrics["validation_examples"] = len(self.val_enc)
        self._event(
            "evaluation",
            "evaluation finished",
            {k: metrics.get(k) for k in ("teacher", "student", "retention")},
        )

        self._progress_marker("export")
        self._event("stage_started", "export started", {"stage": "export"})
        student_cpu, teacher_cpu = student.to("cpu"), teacher.to("cpu")
        latency_inputs = self._latency_inputs()
        runs = cfg.export.latency_runs
        metrics["latency_ms"] = {
            "teacher": {
                f"batch_{n}": torch_latency(teacher_cpu, b, runs=runs)
                for n, b in _items(latency_inputs)
            },
            "student": {
                f"batch_{n}": torch_latency(student_cpu, b, runs=runs, input_map=self.input_map)
                for n, b in _items(latency_inputs)
            },
        }
        export_dir = self.workdir / "export"
        teacher_path = Path(self.teacher_source)
        if (self.ckpt_dir / ckpt_io.TEACHER_DIR).exists():
            teacher_path = self.ckpt_dir / ckpt_io.TEACHER_DIR
        metrics["size_bytes"] = {
            "teacher": size_on_disk(teacher_path)
            if teacher_path.exists()
            else state_bytes(teacher_cpu),
        }
        assert self.student_tokenizer is not None
        # First write without the card's final numbers, to measure the student's size on disk.
        export_hf(student_cpu, self.student_tokenizer, export_dir, card="")
        metrics["size_bytes"]["student"] = size_on_disk(export_dir / "model.safetensors")

        onnx_files: list[Path] = []
        if cfg.export.onnx:
            student_inputs = {name: self._student_batch(b) for name, b in latency_inputs.items()}
            sample, check = (self._student_batch(b) for b in self._onnx_batches())
            onnx_files, metrics["onnx"] = export_onnx(
                student_cpu,
                export_dir / "onnx",
                sample=sample,
                check=check,
                opset=cfg.export.opset,
                int8=cfg.export.int8,
                latency_inputs=student_inputs,
                runs=runs,
            )
        metrics = _jsonable(metrics)
        card = model_card(
            title=f"Distilled student of {self.teacher_source}",
            task=self.task,
            teacher=self.teacher_source,
            config_json=json.loads(cfg.model_dump_json()),
            metrics=metrics,
        )
        (export_dir / "README.md").write_text(card, encoding="utf-8")
        (self.workdir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        self._event(
            "stage_finished",
            "export finished",
            {
                "stage": "export",
                "export_dir": str(export_dir),
                "onnx_files": [str(p) for p in onnx_files],
            },
        )
        return RunResult(
            metrics=metrics,
            export_dir=export_dir,
            metrics_file=self.workdir / "metrics.json",
            onnx_files=onnx_files,
        )

    def _latency_inputs(self) -> dict[str, Batch]:
        pool = list(self.val_enc) or (list(self.stages[0].data.data) if self.stages else [])
        if not pool:
            pool = [
                Encoded(
                    [self.tokenizer.cls_token_id or 0, self.tokenizer.sep_token_id or 0],
                    [0, 0],
                    None,
                )
            ]
        out: dict[str, Batch] = {}
        for n in LATENCY_BATCH_SIZES:
            items = [pool[i % len(pool)] for i in range(n)]
            batch = collate(items, pad_id=self.pad_id)
            batch.pop("labels", None)
            out[f"batch_{n}"] = batch
        return out

    def _onnx_batches(self) -> tuple[Batch, Batch]:
        """(trace, check): both padded, of different batch sizes and lengths.

        Tracing needs padding in the sample, or the mask branch is traced away.
        """
        pool = list(self.val_enc) or [Encoded([0, 0, 0], [0, 0, 0], None)]

        def make(n: int, extra: int) -> Batch:
            batch = collate([pool[i % len(pool)] for i in range(n)], pad_id=self.pad_id)
            batch.pop("labels", None)
            rows = batch["input_ids"].shape[0]
            return (
                {
                    "input_ids": _pad_right(batch["input_ids"], extra, self.pad_id),
                    "token_type_ids": _pad_right(batch["token_type_ids"], extra, 0),
                    "attention_mask": _pad_right(batch["attention_mask"], extra, 0),
                }
                if rows
                else batch
            )

        return make(2, 1), make(3, 4)

    def _student_batch(self, batch: Batch) -> Batch:
        if self.input_map is None:
            return batch
        return {**batch, "input_ids": self.input_map[batch["input_ids"]]}

    # --- callbacks -------------------------------------------------------------------------------

    def _event(self, type_: str, message: str, data: dict[str, Any], level: str = "info") -> None:
        self.cb.on_event(Event(type_, message, _jsonable(data), level))

    def _progress_marker(self, stage: str) -> None:
        self.cb.on_progress(Progress(stage, self.global_step, self.total_steps, {}, 0.0))


# --- helpers ---


def _intermediate_losses(
    f_s: Features,
    f_t: Features,
    mapping: Sequence[int],
    mask: Tensor,
    projections: Projections,
    *,
    attention_kind: str,
    heads: int,
    relation_heads: int,
) -> dict[str, Tensor]:
    """Eq. 7-10 summed over matched layers (student m <-> teacher g(m)); embedding is layer 0."""
    emb = L.hidden_mse(projections.embedding(f_s.hidden[0]), f_t.hidden[0], mask)
    hidden = sum(
        (
            L.hidden_mse(projections.hidden(f_s.hidden[m]), f_t.hidden[g], mask)
            for m, g in enumerate(mapping, start=1)
        ),
        torch.zeros((), device=mask.device),
    )
    out = {"embedding": emb, "hidden": hidden}
    if attention_kind == "mse":
        out["attention"] = sum(
            (
                L.attention_mse(
                    L.attention_scores(f_s.qkv[(m, "query")], f_s.qkv[(m, "key")], heads),
                    L.attention_scores(f_t.qkv[(g - 1, "query")], f_t.qkv[(g - 1, "key")], heads),
                    mask,
                )
                for m, g in enumerate(mapping)
            ),
            torch.zeros((), device=mask.device),
        )
    elif attention_kind == "relation":
        out["attention"] = sum(
            (
                L.relation_kl(f_s.qkv[(m, name)], f_t.qkv[(g - 1, name)], mask, relation_heads)
                for m, g in enumerate(mapping)
                for name in ("query", "key", "value")
            ),
            torch.zeros((), device=mask.device),
        )
    return out


def _attention_kind(choice: str, heads_t: int, heads_s: int) -> str:
    if choice == "auto":
        return "mse" if heads_t == heads_s else "relation"
    if choice == "mse" and heads_t != heads_s:
        raise DistillError(
            "config_invalid",
            f"attention_loss 'mse' needs equal head counts (teacher {heads_t}, student {heads_s}); "
            "use 'relation' or 'auto'",
        )
    return choice


def _relation_heads(chosen: int | None, t_cfg: Any, s_cfg: Any) -> int:
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


def _param_groups(
    named: Sequence[tuple[str, nn.Parameter]], weight_decay: float
) -> list[dict[str, Any]]:
    """No decay on biases and LayerNorm weights (BERT's recipe)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in named:
        if not p.requires_grad:
            continue
        (
            no_decay
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
            else decay
        ).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _schedule(kind: str, warmup_ratio: float, total: int) -> Callable[[int], float]:
    warmup = int(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return factor


def _pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DistillError(
                "device_unavailable", "device 'cuda' requested but no GPU is visible"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _canonical(config: DistillConfig) -> str:
    return json.dumps(json.loads(config.model_dump_json()), sort_keys=True)


def _data_hash(*splits: Sequence[Example]) -> str:
    return ckpt_io.fingerprint(
        *(json.dumps([[e.text, e.text_pair, e.label] for e in split]) for split in splits)
    )


def _pad_right(x: Tensor, extra: int, value: int) -> Tensor:
    return torch.cat([x, torch.full((x.shape[0], extra), value, dtype=x.dtype)], dim=1)


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _items(d: dict[str, Batch]) -> list[tuple[str, Batch]]:
    return [(k.removeprefix("batch_"), v) for k, v in d.items()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value
