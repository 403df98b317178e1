"""Task metrics (scikit-learn, scipy), teacher against student, parameter counts and size on
disk (speed is speed.py's)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import PreTrainedModel

from .data import Batches
from .features import on_device


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
    }


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    constant = np.ptp(t) == 0 or np.ptp(p) == 0  # correlations are undefined, not 0
    return {
        "pearson": float("nan") if constant else float(stats.pearsonr(t, p)[0]),
        "spearman": float("nan") if constant else float(stats.spearmanr(t, p)[0]),
        "mse": float(np.mean((t - p) ** 2)),
    }


PRIMARY_METRIC = {"classification": "accuracy", "regression": "pearson"}
# a model that predicts one class for more than this share of the validation rows has
# collapsed onto it (or the data is that lopsided): worth a warning either way
COLLAPSE_SHARE = 0.95


def compare(
    task: str,
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    validation: Batches,
    *,
    device: torch.device,
    input_map: torch.Tensor | None = None,
    student_validation: Batches | None = None,
) -> dict[str, Any]:
    """Both models' task metrics on the validation set, on `device` (both moved there), and
    the share the student retains. `student_validation`: the same rows as the student's own
    tokenizer encodes them (an exported, trimmed one may differ from the teacher's)."""
    teacher, student = on_device(teacher, device), on_device(student, device)
    t_logits, gold = predict(teacher, validation, device=device)
    s_logits, s_gold = predict(
        student, student_validation or validation, device=device, input_map=input_map
    )
    if not np.array_equal(gold, s_gold):
        raise ValueError("the student's validation rows are not the teacher's")
    t_metrics, s_metrics = task_metrics(task, t_logits, gold), task_metrics(task, s_logits, gold)
    return {
        "teacher": t_metrics,
        "student": s_metrics,
        **retention(task, t_metrics, s_metrics),
        "validation_examples": len(validation.data),
        "top_class": {"teacher": top_class(task, t_logits), "student": top_class(task, s_logits)},
    }


def retention(task: str, teacher: dict[str, float], student: dict[str, float]) -> dict[str, Any]:
    """The share of the teacher's primary metric the student keeps (and of its macro-F1)."""

    def share(metric: str) -> float | None:
        t = teacher.get(metric)
        return float(student[metric] / t) if t and math.isfinite(t) else None

    out: dict[str, Any] = {"retention": share(PRIMARY_METRIC[task])}
    if task == "classification":
        out["retention_macro_f1"] = share("macro_f1")
    return out


def top_class(task: str, logits: np.ndarray) -> dict[str, Any] | None:
    """{"class": id, "share": of the rows}: the class predicted most; None off classification."""
    if task != "classification" or len(logits) == 0:
        return None
    counts = np.bincount(logits.argmax(-1), minlength=logits.shape[-1])
    return {"class": int(counts.argmax()), "share": float(counts.max() / len(logits))}


@torch.no_grad()
def predict(
    model: PreTrainedModel,
    batches: Batches,
    *,
    device: torch.device,
    input_map: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (n, C), gold labels (n,)) over a dataset, in order."""
    model.train(False)
    logits, gold = [], []
    for batch in batches.in_order():
        ids = batch["input_ids"]
        if input_map is not None:
            ids = input_map[ids]
        out = model(
            input_ids=ids.to(device),
            attention_mask=batch["attention_mask"].to(device),
            token_type_ids=batch["token_type_ids"].to(device),
        )
        logits.append(out.logits.float().cpu().numpy())
        gold.append(batch["labels"].cpu().numpy())
    return np.concatenate(logits), np.concatenate(gold)


def task_metrics(task: str, logits: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    if task == "regression":
        return regression_metrics(gold.tolist(), logits.reshape(-1).tolist())
    return classification_metrics(gold.tolist(), logits.argmax(-1).tolist())


def size_on_disk(path: Path) -> int:
    """Bytes of the weight files under a folder (or of one file)."""
    if path.is_file():
        return path.stat().st_size
    return sum(
        f.stat().st_size for f in path.rglob("*") if f.suffix in {".safetensors", ".bin", ".onnx"}
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
