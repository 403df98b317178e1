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


def compare(
    task: str,
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    validation: Batches,
    *,
    device: torch.device,
    input_map: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Both models' task metrics on the validation set, and the share the student retains."""
    t_logits, gold = predict(teacher, validation, device=device)
    s_logits, _ = predict(student, validation, device=device, input_map=input_map)
    t_metrics, s_metrics = task_metrics(task, t_logits, gold), task_metrics(task, s_logits, gold)
    t_primary = t_metrics[PRIMARY_METRIC[task]]
    retention = (
        float(s_metrics[PRIMARY_METRIC[task]] / t_primary)
        if t_primary and math.isfinite(t_primary)
        else None
    )
    return {
        "teacher": t_metrics,
        "student": s_metrics,
        "retention": retention,
        "validation_examples": len(validation.data),
    }


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
