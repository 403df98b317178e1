"""Objects as files under one root folder, written atomically (temp file, fsync, rename)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.storage.base import CHUNK, ObjectInfo, Readable, StorageError, StoredObject, check_key


class LocalStorage:
    """A reader never sees half an object: a write lands in a temp file in the same folder,
    is fsynced, then renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, stream: Readable) -> StoredObject:
        target = self._path(key)
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
            return self.put(key, stream)

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        # Opened here, not in the generator: an absent object fails the call, not the first
        # chunk of a response whose headers are already sent.
        return _chunks(self.open(key), start, end)

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        return ObjectInfo(key=key, size_bytes=path.stat().st_size) if path.is_file() else None

    def list(self, prefix: str) -> list[ObjectInfo]:
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        return [
            ObjectInfo(key=p.relative_to(self.root).as_posix(), size_bytes=p.stat().st_size)
            for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")  # a write in flight is not an object
        ]

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        # Empty parent folders stay: removing one could race a concurrent put into it.
        folder = self._path(prefix.rstrip("/"))
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def _chunks(f: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
    with f:
        f.seek(start)
        remaining = None if end is None else end - start + 1
        while remaining is None or remaining > 0:
            chunk = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
