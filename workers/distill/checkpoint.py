"""Save and load {student, projections, optimizer, scheduler, step, rng, data order, config}, and
the fingerprint that says which run a checkpoint belongs to."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from contract.config import DistillConfig
from contract.records import Example

from .errors import DistillError

FORMAT = 1
CHECKPOINT_FILE = "last.pt"
TEACHER_DIR = "teacher-finetuned"


def checkpoint_dir(workdir: Path) -> Path:
    """Everything a run needs to resume: the last checkpoint and the fine-tuned teacher."""
    return workdir / "checkpoints"


def teacher_dir(workdir: Path) -> Path:
    """The fine-tuned teacher (a save_pretrained folder), inside checkpoint_dir."""
    return checkpoint_dir(workdir) / TEACHER_DIR


@dataclass
class Checkpoint:
    fingerprint: str  # config + teacher + data; a different one refuses to resume
    config_json: str
    stage_index: int  # the stage to run next, or the one in progress
    stage_step: int  # optimizer steps done in that stage; the data-order position follows
    global_step: int
    student: dict[str, torch.Tensor] | None = None
    projections: dict[str, torch.Tensor] | None = None
    teacher: dict[str, torch.Tensor] | None = None  # only while the teacher is being fine-tuned
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)


def fingerprint(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def run_fingerprint(
    config: DistillConfig,
    teacher: nn.Module,
    train: Sequence[Example],
    validation: Sequence[Example],
) -> str:
    """What a checkpoint is valid for: the resolved config, the teacher's weights, the data.

    The teacher counts by content, not by path, so a caller may hand the same teacher over from
    another folder on resume. Cost: one pass over its weights (about a second for BERT-base).
    `export` (ONNX, timing runs) acts only after training, so it never refuses a resume.
    """
    canonical = json.dumps(config.model_dump(mode="json", exclude={"export"}), sort_keys=True)
    splits = [json.dumps([[e.text, e.text_pair, e.label] for e in s]) for s in (train, validation)]
    return fingerprint(canonical, weights_digest(teacher), *splits)


def weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        # the raw bytes, whatever the dtype (numpy has no bfloat16)
        h.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the module's tensors on the CPU, safe to keep while training goes on."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def rng_state() -> dict[str, Any]:
    py_version, py_state, py_gauss = random.getstate()
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unique() -> str:
    """A temp name of this writer's own: two processes that save into one folder (a stale
    owner beside the new one) never write the same temp file."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def save(directory: Path, ckpt: Checkpoint) -> Path:
    """Write atomically: a temp file in the same folder, then os.replace."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    tmp = directory / f".{CHECKPOINT_FILE}.{_unique()}.tmp"
    payload = {"format": FORMAT, **ckpt.__dict__}
    # Serialised in memory first (cost: one checkpoint's size in RAM): torch.save straight to a
    # file turns a full disk into an opaque RuntimeError; f.write raises the real OSError.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves the last good checkpoint, no torn one
        raise
    return path


def load(directory: Path) -> Checkpoint | None:
    path = directory / CHECKPOINT_FILE
    if not path.exists():
        return None
    return load_file(path)


def load_file(path: Path) -> Checkpoint:
    if not path.is_file():
        raise DistillError("checkpoint_not_found", f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file; never half-resume from it
        raise DistillError("checkpoint_corrupt", f"cannot read {path}: {exc}") from exc
    if payload.pop("format", None) != FORMAT:
        raise DistillError("checkpoint_mismatch", f"{path} was written by another engine version")
    return Checkpoint(**payload)


def save_model_dir(model: PreTrainedModel, directory: Path) -> None:
    """save_pretrained into a temp folder, then swap it in whole."""
    tmp = directory.with_name(f"{directory.name}.{_unique()}.tmp")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
