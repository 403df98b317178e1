"""Read what a save_pretrained folder holds without importing torch or transformers."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import AppError

# Encoders the engine knows how to distil (BertModel layout: attention.self.query/key).
SUPPORTED_MODEL_TYPES = frozenset({"bert"})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".joblib")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class ModelInfo:
    root: Path
    model_type: str
    num_parameters: int
    num_layers: int
    hidden_size: int
    has_task_head: bool
    labels: list[str]
    config: dict[str, Any]


def _bad(message: str) -> AppError:
    return AppError("model_invalid", message, 422, field="file")


def find_root(folder: Path) -> Path:
    """The folder holding config.json: the archive's top level or its single subfolder."""
    if (folder / "config.json").is_file():
        return folder
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "config.json").is_file():
        return entries[0]
    raise _bad("no config.json at the top of the archive (expected a save_pretrained folder)")


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise _bad(f"{path.name} is not a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_SAFETENSORS_HEADER:
            raise _bad(f"{path.name} has an implausible header")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _bad(f"{path.name} is not a safetensors file") from exc
    if not isinstance(header, dict):
        raise _bad(f"{path.name} is not a safetensors file")
    return {k: list(v.get("shape", [])) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict)}


def inspect_folder(folder: Path) -> ModelInfo:
    root = find_root(folder)
    for path in root.rglob("*"):
        if path.is_symlink():
            raise _bad(f"{path.name} is a symbolic link")
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise _bad(f"{path.name}: only safetensors weights are accepted, never pickled files")
        if path.suffix == ".py":
            raise _bad(f"{path.name}: custom model code is not accepted")
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad("config.json is not valid JSON") from exc
    if not isinstance(config, dict):
        raise _bad("config.json must hold a JSON object")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise _bad(f"model_type {model_type!r} is not supported; supported: "
                   f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}")
    if config.get("auto_map"):
        raise _bad("config.json asks for remote code (auto_map); that is never run")
    weights = sorted(root.glob("*.safetensors"))
    if not weights:
        raise _bad("no .safetensors weights in the folder")
    if not any((root / name).is_file() for name in TOKENIZER_FILES):
        raise _bad("no tokenizer (tokenizer.json or vocab.txt) in the folder")
    shapes: dict[str, list[int]] = {}
    for w in weights:
        shapes.update(safetensors_shapes(w))
    num_parameters = sum(math.prod(s) for s in shapes.values())
    id2label = config.get("id2label") or {}
    architectures = config.get("architectures") or []
    has_head = any(name.endswith("classifier.weight") for name in shapes) and any(
        "ForSequenceClassification" in a for a in architectures)
    labels = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))] if has_head else []
    try:
        num_layers = int(config["num_hidden_layers"])
        hidden_size = int(config["hidden_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad("config.json lacks num_hidden_layers or hidden_size") from exc
    return ModelInfo(root=root, model_type=model_type, num_parameters=num_parameters,
                     num_layers=num_layers, hidden_size=hidden_size, has_task_head=has_head,
                     labels=labels, config=config)
