"""Local files around transfers: partial downloads, checksums, zipped teacher folders."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

CHUNK = 1024 * 1024
# Float weights barely compress; deflating them costs seconds per 100 MB for nothing.
_STORED_SUFFIXES = frozenset({".safetensors", ".bin", ".onnx", ".pt", ".h5", ".msgpack"})


def partial_path(dest: Path) -> Path:
    """Where download_artifact keeps the bytes of an unfinished download of `dest`."""
    return dest.with_name(dest.name + ".part")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def zip_folder(folder: Path, archive: Path) -> Path:
    """A save_pretrained folder as a zip with paths relative to it; dot-files (.git, .cache)
    are left out and symlinks (the Hugging Face cache layout) are followed."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if not path.is_file() or any(part.startswith(".") for part in relative.parts):
                continue
            kind = zipfile.ZIP_STORED if path.suffix in _STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            zf.write(path, relative.as_posix(), compress_type=kind)
    return archive
