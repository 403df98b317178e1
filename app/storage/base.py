"""The storage protocol, its value types and the helpers every backend shares."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
CHUNK = 1024 * 1024  # every read and write moves at most this much: memory stays bounded


class StorageError(Exception):
    """A write or read failed; the message is safe to show."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size_bytes: int


class Readable(Protocol):
    """What `put` reads from: an open binary file, a BytesIO, an upload's spooled file."""

    def read(self, size: int = -1, /) -> bytes: ...


def check_key(key: str) -> str:
    """Keys are slash-separated safe names: no '..', no absolute paths, no hidden files."""
    parts = key.split("/")
    if not parts or any(not _KEY_PART.match(p) or p in (".", "..") for p in parts):
        raise ValueError(f"unsafe storage key: {key!r}")
    return key


class Storage(Protocol):
    """Objects addressed by key; no method hands out where an object sits."""

    def put(self, key: str, stream: Readable) -> StoredObject:
        """Store the stream's bytes under key, atomically: readers see all or nothing."""
        ...

    def put_file(self, key: str, source: Path) -> StoredObject:
        """Store a local file's bytes under key (a worker's output, an unpacked upload)."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the object; FileNotFoundError when it is absent."""
        ...

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end] inclusive (HTTP Range semantics; None: to the end), in chunks of
        at most CHUNK. FileNotFoundError is raised by the call itself, before any chunk."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size, or None when it is absent."""
        ...

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix/`, sorted by key."""
        ...

    def delete(self, key: str) -> None:
        """Remove one object; an absent one is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix/`."""
        ...


@dataclass(frozen=True)
class Removal:
    """Objects a transaction let go of, removed once it has committed: a rollback then leaves
    every file its rows name, and a crash between the two leaves an orphan, never a row
    without its file."""

    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()

    def apply(self, storage: Storage) -> None:
        for key in self.keys:
            storage.delete(key)
        for prefix in self.prefixes:
            storage.delete_prefix(prefix)


def download(storage: Storage, key: str, target: Path) -> Path:
    """Copy one object into a local file (a worker's scratch folder), atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with storage.open(key) as source, partial.open("wb") as out:
        while chunk := source.read(CHUNK):
            out.write(chunk)
    partial.replace(target)
    return target


def download_prefix(storage: Storage, prefix: str, folder: Path) -> list[Path]:
    """Copy every object under `prefix/` into `folder`, keeping the relative keys."""
    base = prefix.rstrip("/") + "/"
    return [
        download(storage, info.key, folder / info.key.removeprefix(base))
        for info in storage.list(prefix)
    ]


def upload_folder(storage: Storage, prefix: str, folder: Path) -> list[StoredObject]:
    """Put every file below `folder` under `prefix/`, keeping relative paths as keys."""
    return [
        storage.put_file(f"{prefix}/{path.relative_to(folder).as_posix()}", path)
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
    ]
