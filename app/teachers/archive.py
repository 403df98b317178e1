"""Unpack an uploaded model archive (.zip or .tar.gz) without trusting it."""

from __future__ import annotations

import gzip
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from app.errors import AppError

CHUNK = 1024 * 1024
# tarfile reads a pax or GNU long-name header whole into memory; real ones hold a path and a
# few attributes, so anything larger is a memory bomb.
MAX_TAR_HEADER = 64 * 1024
_TAR_HEADER_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
# What a truncated or doctored archive raises while it is read. A chain of thousands of pax
# headers makes tarfile recurse until RecursionError.
_CORRUPT_ZIP = (zipfile.BadZipFile, zlib.error, EOFError)
# zipfile reads the whole central directory into memory and builds a ZipInfo per entry before
# anyone can count them (issue 12: 400,000 entries cost +261 MiB before the member cap said
# no). The end-of-central-directory record says both the count and the directory's size, in
# the file's last 64 KiB: read there first. A save_pretrained folder's central record is
# ~100 bytes (46 fixed, a short name, a timestamp extra); more than this per allowed member
# means a directory that lies about its count.
CENTRAL_RECORD_BUDGET = 2048
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_CORRUPT_TAR = (tarfile.TarError, zlib.error, EOFError, gzip.BadGzipFile, RecursionError)


def _bad(message: str) -> AppError:
    return AppError("model_invalid", message, 422, field="file")


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if (
        path.is_absolute()
        or name.startswith(("/", "\\"))
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])
    ):
        raise _bad(f"archive member {name!r} points outside the archive")
    return path


class _GuardedTarInfo(tarfile.TarInfo):
    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        # tarfile's documented hook for subclasses, called before a header's data is read.
        if self.type in _TAR_HEADER_TYPES and self.size > MAX_TAR_HEADER:
            raise _bad(
                f"the archive has a {self.size} byte pax or long-name header "
                f"(at most {MAX_TAR_HEADER})"
            )
        return super()._proc_member(tf)  # type: ignore[misc, no-any-return]


def extract(archive: Path, dest: Path, *, max_members: int, max_unpacked_bytes: int) -> None:
    """Extract regular files only; refuse links, devices, traversal and zip bombs."""
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        try:
            _extract_zip(
                archive, dest, max_members=max_members, max_unpacked_bytes=max_unpacked_bytes
            )
        except _CORRUPT_ZIP as exc:
            raise _bad(f"the archive is corrupt ({exc})") from exc
        return
    with archive.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        tf = tarfile.open(archive, mode="r:gz" if gzipped else "r:", tarinfo=_GuardedTarInfo)
    except _CORRUPT_TAR as exc:
        if not gzipped:
            raise _bad("the file is neither a .zip nor a .tar.gz archive") from exc
        raise _bad(f"the archive is corrupt ({exc})") from exc
    with tf:
        try:
            _extract_tar(tf, dest, max_members=max_members, max_unpacked_bytes=max_unpacked_bytes)
        except _CORRUPT_TAR as exc:
            raise _bad(f"the archive is corrupt ({exc})") from exc


def _target(dest: Path, rel: PurePosixPath, name: str) -> Path:
    if not rel.parts:
        raise _bad(f"archive member {name!r} has no file name")
    target = dest.joinpath(*rel.parts)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise _bad(f"archive member {name!r} clashes with a file of the same name") from exc
    if target.is_dir():
        raise _bad(f"archive member {name!r} clashes with a folder of the same name")
    return target


def _write(src: IO[bytes], target: Path, *, declared: int) -> None:
    written = 0
    with target.open("wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            # the declared size is the archive's claim; count what actually comes out too.
            if written > declared:
                raise _bad("the archive's sizes do not match its contents")
            out.write(chunk)


def central_directory(archive: Path) -> tuple[int, int]:
    """(entries, central directory bytes) as the end records say, read from the file's tail
    alone (zip64 too); BadZipFile when there is no end record."""
    with archive.open("rb") as f:
        size = f.seek(0, 2)
        tail_start = max(0, size - (22 + 0xFFFF))  # the record and its longest comment
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) - at < 22:
            raise zipfile.BadZipFile("no end of central directory record")
        entries, cd_size = struct.unpack_from("<HI", tail, at + 10)
        if entries == 0xFFFF or cd_size == 0xFFFFFFFF:  # zip64: the real numbers are elsewhere
            locator = at - 20
            if locator < 0 or tail[locator : locator + 4] != _EOCD64_LOCATOR:
                raise zipfile.BadZipFile("a zip64 archive without its end record locator")
            (offset,) = struct.unpack_from("<Q", tail, locator + 8)
            f.seek(offset)
            record = f.read(56)
            if len(record) < 56 or record[:4] != _EOCD64:
                raise zipfile.BadZipFile("a zip64 archive without its end record")
            entries, cd_size = struct.unpack_from("<QQ", record, 32)
    return entries, cd_size


def _extract_zip(archive: Path, dest: Path, *, max_members: int, max_unpacked_bytes: int) -> None:
    entries, cd_size = central_directory(archive)
    if entries > max_members:
        raise _bad(f"the archive has more than {max_members} entries")
    if cd_size > max_members * CENTRAL_RECORD_BUDGET:
        raise _bad(
            f"the archive's central directory ({cd_size} bytes) is too large for "
            f"{max_members} entries"
        )
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise _bad(f"the archive has more than {max_members} entries")
        total = 0
        for info in infos:
            rel = _safe_member(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _bad(f"archive member {info.filename!r} is a symbolic link")
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise _bad(f"archive member {info.filename!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _bad(
                    f"archive member {info.filename!r} is compressed with method "
                    f"{info.compress_type}; only stored and deflate are accepted"
                )
            total += info.file_size
            if total > max_unpacked_bytes:
                raise _bad(f"the archive unpacks to more than {max_unpacked_bytes} bytes")
            target = _target(dest, rel, info.filename)
            with zf.open(info) as src:
                _write(src, target, declared=info.file_size)


def _extract_tar(
    tf: tarfile.TarFile, dest: Path, *, max_members: int, max_unpacked_bytes: int
) -> None:
    total = 0
    for count, member in enumerate(tf, start=1):
        if count > max_members:
            raise _bad(f"the archive has more than {max_members} entries")
        rel = _safe_member(member.name)
        if member.isdir():
            continue
        if not member.isfile():
            raise _bad(f"archive member {member.name!r} is not a regular file")
        total += member.size
        if total > max_unpacked_bytes:
            raise _bad(f"the archive unpacks to more than {max_unpacked_bytes} bytes")
        target = _target(dest, rel, member.name)
        src = tf.extractfile(member)
        if src is None:
            raise _bad(f"archive member {member.name!r} cannot be read")
        with src:
            _write(src, target, declared=member.size)
