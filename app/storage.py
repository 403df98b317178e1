"""Object storage behind a small protocol; LocalStorage writes atomically under safe keys."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol

from app.config import get_settings

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
CHUNK = 1024 * 1024


class StorageError(Exception):
    """A write or read failed; the message is safe to show."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size_bytes: int
    sha256: str


def check_key(key: str) -> str:
    parts = key.split("/")
    if not parts or any(not _KEY_PART.match(p) or p in (".", "..") for p in parts):
        raise ValueError(f"unsafe storage key: {key!r}")
    return key


class Storage(Protocol):
    def put_file(self, key: str, source: Path) -> StoredObject: ...
    def put_stream(self, key: str, stream: BinaryIO) -> StoredObject: ...
    def open(self, key: str) -> BinaryIO: ...
    def local_path(self, key: str) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...


class LocalStorage:
    """Files under a root folder. A write lands in a temp file in the same folder, is fsynced,
    then renamed into place, so a reader never sees half an object."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def local_path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_stream(self, key: str, stream: BinaryIO) -> StoredObject:
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, target)
        except OSError as exc:
            Path(tmp_name).unlink(missing_ok=True)
            raise StorageError(f"could not write {key}: {exc.strerror or exc}") from exc
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return StoredObject(key=key, size_bytes=size, sha256=digest.hexdigest())

    def put_file(self, key: str, source: Path) -> StoredObject:
        with source.open("rb") as stream:
            return self.put_stream(key, stream)

    def open(self, key: str) -> BinaryIO:
        return self.local_path(key).open("rb")

    def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        path = self.local_path(prefix)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end] inclusive (HTTP Range semantics), in chunks."""
        with self.open(key) as f:
            f.seek(start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                chunk = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk


@lru_cache(maxsize=4)
def _storage_for(root: str) -> LocalStorage:
    return LocalStorage(Path(root))


def get_storage() -> LocalStorage:
    return _storage_for(str(get_settings().storage_dir))
