"""After training: evaluate teacher and student, export the student (HF folder, ONNX), measure
size and speed, write metrics.json once and say where everything is."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from contract.config import DistillConfig

from .callbacks import Reporter, jsonable
from .checkpoint import teacher_dir
from .data import Batch, Batches, collate, encode
from .evaluate import (
    COLLAPSE_SHARE,
    compare,
    count_parameters,
    retention,
    size_on_disk,
    state_bytes,
    task_metrics,
)
from .export import export_hf, export_onnx, model_card, predict_onnx, reload_hf
from .prepare import Prepared, eval_batches
from .speed import legacy_latency, mapped_ids, measure_speed
from .student import Student

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class RunResult:
    metrics: dict[str, Any]
    export_dir: Path  # the HF folder: safetensors, tokenizer, README.md
    onnx_files: list[Path]  # model.onnx (+ model.int8.onnx); [] without ONNX export
    metrics_file: Path  # metrics.json, written once, beside the export folder
    config: DistillConfig  # resolved: what actually ran


def finish(
    ready: Prepared,
    student: Student,
    *,
    teacher_source: str,
    workdir: Path,
    device: torch.device,
    report: Reporter,
    collapse_guard: dict[str, Any] | None = None,
) -> RunResult:
    """`collapse_guard`: what the guard saw and did (guard.py), for metrics.json and the card."""
    config = ready.config
    student.model.train(False)
    ready.teacher.model.train(False)
    report.marker("evaluate")
    report.event("stage_started", "evaluate started", {"stage": "evaluate"})
    metrics: dict[str, Any] = {
        "parameters": {
            "teacher": count_parameters(ready.teacher.model),
            "student": count_parameters(student.model),
        },
    }
    if collapse_guard is not None:
        metrics["collapse_guard"] = collapse_guard
    export_dir = workdir / "export"
    # Written first, without the card's numbers: the student's numbers are this folder's,
    # reloaded and fed the validation rows through its own tokenizer, as a user would.
    export_hf(student.model.cpu(), student.vocab.tokenizer, export_dir, card="")
    exported_rows: Batches | None = None
    if config.task != "general" and ready.validation:
        exported, tokenizer = reload_hf(export_dir)
        exported_rows = _encoded_for(ready, tokenizer)
        # both on the run's device, wherever the stages (or an earlier process) left them
        metrics |= compare(
            config.task,
            ready.teacher.model,
            exported,
            eval_batches(ready, ready.validation, ready.pad_id),
            device=device,
            student_validation=exported_rows,
        )
        del exported
        _warn_collapsed(ready, metrics, report)
    report.event(
        "evaluation",
        "evaluation finished",
        {k: metrics.get(k) for k in ("teacher", "student", "retention", "retention_macro_f1")},
    )
    report.marker("export")
    report.event("stage_started", "export started", {"stage": "export"})
    result = _export(
        ready,
        student,
        metrics,
        teacher_source=teacher_source,
        workdir=workdir,
        validation=exported_rows,
    )
    report.event(
        "stage_finished",
        "export finished",
        {
            "stage": "export",
            "export_dir": str(result.export_dir),
            "onnx_files": [str(p) for p in result.onnx_files],
        },
    )
    return result


def _export(
    ready: Prepared,
    student: Student,
    metrics: dict[str, Any],
    *,
    teacher_source: str,
    workdir: Path,
    validation: Batches | None,
) -> RunResult:
    """Size of both models, the student's ONNX files (scored on `validation`), speed, the
    card and metrics.json; the HF folder is written already."""
    config = ready.config
    student_cpu, teacher_cpu = student.model.cpu(), ready.teacher.model.cpu()
    finetuned = teacher_dir(workdir)
    on_disk = finetuned if finetuned.exists() else Path(teacher_source)
    teacher_bytes = size_on_disk(on_disk) if on_disk.exists() else state_bytes(teacher_cpu)
    export_dir = workdir / "export"
    student_bytes = size_on_disk(export_dir / "model.safetensors")
    metrics["size_bytes"] = {"teacher": teacher_bytes, "student": student_bytes}
    onnx_files: list[Path] = []
    if config.export.onnx:
        sample, check = (mapped_ids(b, student.vocab.input_map) for b in _onnx_batches(ready))
        onnx_files, metrics["onnx"] = export_onnx(
            student_cpu,
            export_dir / "onnx",
            sample=sample,
            check=check,
            opset=config.export.opset,
            int8=config.export.int8,
        )
        if validation is not None:
            _score_onnx(config.task, metrics, onnx_files, validation)
    _measure_speed(ready, student, metrics, onnx_files)
    metrics = jsonable(metrics)
    card = model_card(
        title=f"Distilled student of {teacher_source}",
        task=config.task,
        teacher=teacher_source,
        config_json=json.loads(config.model_dump_json()),
        metrics=metrics,
    )
    (export_dir / "README.md").write_text(card, encoding="utf-8")
    metrics_file = workdir / METRICS_FILE
    metrics_file.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return RunResult(metrics, export_dir, onnx_files, metrics_file, config)


def _measure_speed(
    ready: Prepared, student: Student, metrics: dict[str, Any], onnx_files: list[Path]
) -> None:
    """metrics["speed"] (both models on the CPU by now), and the older latency figures taken
    from it: one timing, not two."""
    export = ready.config.export
    onnx = dict(zip(("onnx", "onnx_int8"), onnx_files, strict=False))
    speed = measure_speed(
        student.model,
        ready.teacher.model,
        pool=ready.validation or ready.train,
        input_map=student.vocab.input_map,
        onnx=onnx,
        seq_len=export.speed_seq_len,
        latency_runs=export.latency_runs,
        throughput_runs=export.throughput_runs,
    )
    metrics["speed"] = speed
    # the shape readers knew before the speed block: PyTorch fp32, now at speed["seq_len"]
    metrics["latency_ms"] = {
        side: legacy_latency(speed, side, "pytorch_fp32") for side in ("teacher", "student")
    }
    for kind, runtime in (("fp32", "onnx"), ("int8", "onnx_int8")):
        if runtime in onnx:
            metrics["onnx"][kind]["latency_ms"] = legacy_latency(speed, "student", runtime)


def _encoded_for(ready: Prepared, tokenizer: PreTrainedTokenizerBase) -> Batches:
    """The validation rows as the exported tokenizer encodes them, in order."""
    config = ready.config
    rows = encode(
        ready.validation_rows,
        tokenizer,
        max_length=config.hyperparameters.max_seq_length,
        task=config.task,
        label2id={name: i for i, name in enumerate(ready.teacher.labels)},
    )
    return eval_batches(ready, rows, int(tokenizer.pad_token_id or 0))


def _score_onnx(
    task: str, metrics: dict[str, Any], onnx_files: list[Path], validation: Batches
) -> None:
    """Each ONNX file's task metrics on the validation rows, and what it retains of the
    teacher's: the int8 file is what a user deploys, and it may score otherwise."""
    for kind, path in zip(("fp32", "int8"), onnx_files, strict=False):
        outputs, gold = predict_onnx(path, validation)
        scored = task_metrics(task, outputs, gold)
        entry = metrics["onnx"][kind]
        entry["validation"] = scored
        entry |= retention(task, metrics["teacher"], scored)


def _warn_collapsed(ready: Prepared, metrics: dict[str, Any], report: Reporter) -> None:
    """A warning for a teacher or student that predicts one class for nearly every row."""
    rows = metrics["validation_examples"]
    for side, top in (metrics.get("top_class") or {}).items():
        if top is None or top["share"] <= COLLAPSE_SHARE:
            continue
        label = ready.teacher.labels[top["class"]]
        report.event(
            "warning",
            f"the {side} predicts {label!r} for {top['share']:.0%} of the {rows} validation "
            "rows: it has collapsed onto one class, or the data is that lopsided",
            {"stage": "evaluate", "model": side, "label": label, "share": top["share"]},
            level="warning",
        )


def _onnx_batches(ready: Prepared) -> tuple[Batch, Batch]:
    """(trace, check): both padded, of different batch sizes and lengths.

    Tracing needs padding in the sample, or the mask branch is traced away.
    """
    pool = ready.validation or ready.train

    def make(n: int, extra: int) -> Batch:
        batch = collate([pool[i % len(pool)] for i in range(n)], pad_id=ready.pad_id)
        return {
            "input_ids": _pad_right(batch["input_ids"], extra, ready.pad_id),
            "token_type_ids": _pad_right(batch["token_type_ids"], extra, 0),
            "attention_mask": _pad_right(batch["attention_mask"], extra, 0),
        }

    return make(2, 1), make(3, 4)


def _pad_right(x: Tensor, extra: int, value: int) -> Tensor:
    return torch.cat([x, torch.full((x.shape[0], extra), value, dtype=x.dtype)], dim=1)
