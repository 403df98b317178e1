"""Objects as files under one root folder, written atomically (temp file, fsync, rename)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.storage.base import CHUNK, ObjectInfo, StorageError, StoredObject, check_key


class LocalStorage:
    """A reader never sees half an object: a write lands in a temp file in the same folder,
    is fsynced, then renamed into place."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path:
        """Deprecated: callers are moving to open/stream/download; removed once none is left."""
        return self._path(key)

    def put(self, key: str, stream: BinaryIO) -> StoredObject:
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

    # Kept under its old name too while callers move over.
    put_stream = put

    def put_file(self, key: str, source: Path) -> StoredObject:
        with source.open("rb") as stream:
            return self.put(key, stream)

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
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
            if p.is_file() and not p.name.startswith(".")
        ]

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
