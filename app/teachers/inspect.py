"""Read what a save_pretrained folder holds without importing torch or transformers."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from app.errors import AppError
from contract.model_files import NO_TOKENIZER, has_tokenizer, tokenizer_size, vocabulary_mismatch
from contract.vocab import SUPPORTED_MODEL_TYPES

# Encoders the engine knows how to distil (BertModel layout: attention.self.query/key).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".joblib")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# Far above any encoder worth distilling; bounded so a config cannot overflow the row's columns.
MAX_LAYERS = 1024
MAX_HIDDEN_SIZE = 65536


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


def _sizes(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from the header, each entry checked against the bytes the file holds."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise _bad(f"{path.name} is not a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise _bad(f"{path.name} has an implausible header")
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise _bad(f"{path.name} is not a safetensors file") from exc
    if not isinstance(header, dict):
        raise _bad(f"{path.name} is not a safetensors file")
    data_bytes = size - 8 - length
    shapes: dict[str, list[int]] = {}
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        entry = tensor if isinstance(tensor, dict) else {}
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        # No dtype is smaller than 4 bits (F4), so a tensor holds at most two elements a byte.
        if not (
            isinstance(entry.get("dtype"), str)
            and _sizes(shape)
            and _sizes(offsets)
            and len(offsets) == 2
            and offsets[0] <= offsets[1] <= data_bytes
            and math.prod(shape) <= 2 * (offsets[1] - offsets[0])
        ):
            raise _bad(f"{path.name}: the header entry of tensor {name!r} is corrupt")
        shapes[name] = shape
    return shapes


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _read_json(path: Path) -> Any:
    """Strict JSON: NaN, Infinity and numbers that overflow to infinity are refused."""
    try:
        return json.loads(
            path.read_text(encoding="utf-8"), parse_constant=_refuse_constant, parse_float=_finite
        )
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _bad(f"{path.name} is not valid JSON ({exc})") from exc


def _count(config: dict[str, Any], key: str, maximum: int) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= maximum:
        raise _bad(f"config.json: {key} must be a whole number from 1 to {maximum}")
    return value


def inspect_folder(folder: Path) -> ModelInfo:
    root = find_root(folder)
    for path in root.rglob("*"):
        if path.is_symlink():
            raise _bad(f"{path.name} is a symbolic link")
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise _bad(f"{path.name}: only safetensors weights are accepted, never pickled files")
        if path.suffix == ".py":
            raise _bad(f"{path.name}: custom model code is not accepted")
    config = _read_json(root / "config.json")
    if not isinstance(config, dict):
        raise _bad("config.json must hold a JSON object")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
        raise _bad(
            f"model_type {model_type!r} is not supported; supported: "
            f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
        )
    tokenizer_path = root / "tokenizer_config.json"
    tokenizer_config = _read_json(tokenizer_path) if tokenizer_path.is_file() else {}
    for name, settings in (("config.json", config), (tokenizer_path.name, tokenizer_config)):
        if isinstance(settings, dict) and settings.get("auto_map"):
            raise _bad(f"{name} asks for remote code (auto_map); that is never run")
    weights = sorted(root.glob("*.safetensors"))
    if not weights:
        raise _bad("no .safetensors weights in the folder")
    if not has_tokenizer(root):
        raise _bad(NO_TOKENIZER)
    vocab_size, tokens = config.get("vocab_size"), tokenizer_size(root)
    if isinstance(vocab_size, int) and tokens is not None:
        if mismatch := vocabulary_mismatch(tokens, vocab_size):
            raise _bad(mismatch)
    shapes: dict[str, list[int]] = {}
    for w in weights:
        shapes.update(safetensors_shapes(w))
    num_parameters = sum(math.prod(s) for s in shapes.values())
    num_layers = _count(config, "num_hidden_layers", MAX_LAYERS)
    hidden_size = _count(config, "hidden_size", MAX_HIDDEN_SIZE)
    id2label = config.get("id2label") or {}
    architectures = config.get("architectures") or []
    has_head = (
        any(name.endswith("classifier.weight") for name in shapes)
        and isinstance(architectures, list)
        and any(isinstance(a, str) and "ForSequenceClassification" in a for a in architectures)
    )
    try:
        labels = [str(id2label[k]) for k in sorted(id2label, key=int)] if has_head else []
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise _bad("config.json: id2label must map class numbers to names") from exc
    return ModelInfo(
        root=root,
        model_type=model_type,
        num_parameters=num_parameters,
        num_layers=num_layers,
        hidden_size=hidden_size,
        has_task_head=has_head,
        labels=labels,
        config=config,
    )
