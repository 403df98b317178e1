"""Where uploads, checkpoints and artifacts live, addressed by key, never by path.

Callers put, open, stream, list and delete by key. A worker that needs files on disk (a
teacher folder, a checkpoint to resume) copies them into its own scratch folder with
`download` / `download_prefix`; nothing outside a backend knows where an object sits.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from app.config import get_settings
from app.storage.base import (
    CHUNK,
    ObjectInfo,
    Readable,
    Removal,
    Storage,
    StorageError,
    StoredObject,
    check_key,
    download,
    download_prefix,
    upload_folder,
)
from app.storage.local import LocalStorage

__all__ = [
    "CHUNK",
    "LocalStorage",
    "ObjectInfo",
    "Readable",
    "Removal",
    "Storage",
    "StorageError",
    "StoredObject",
    "check_key",
    "download",
    "download_prefix",
    "get_storage",
    "upload_folder",
]


@lru_cache(maxsize=4)
def _storage_for(root: str) -> LocalStorage:
    return LocalStorage(Path(root))


def get_storage() -> Storage:
    """The configured backend; local disk is the only one for now."""
    return _storage_for(str(get_settings().storage_dir))
