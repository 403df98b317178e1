"""Unpack an uploaded model archive (.zip or .tar.gz) without trusting it."""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from app.errors import AppError


def _bad(message: str) -> AppError:
    return AppError("model_invalid", message, 422, field="file")


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts or (
        path.parts and ":" in path.parts[0]
    ):
        raise _bad(f"archive member {name!r} points outside the archive")
    return path


def extract(archive: Path, dest: Path, *, max_members: int, max_unpacked_bytes: int) -> None:
    """Extract regular files only; refuse links, devices, traversal and zip bombs."""
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest, max_members=max_members, max_unpacked_bytes=max_unpacked_bytes)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, dest, max_members=max_members, max_unpacked_bytes=max_unpacked_bytes)
    else:
        raise _bad("the file is neither a .zip nor a .tar.gz archive")


def _extract_zip(archive: Path, dest: Path, *, max_members: int, max_unpacked_bytes: int) -> None:
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
            total += info.file_size
            if total > max_unpacked_bytes:
                raise _bad(f"the archive unpacks to more than {max_unpacked_bytes} bytes")
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            # file_size is the archive's claim; count what actually comes out too.
            with zf.open(info) as src, target.open("wb") as out:
                while chunk := src.read(1024 * 1024):
                    written += len(chunk)
                    if written > info.file_size or total - info.file_size + written > (
                        max_unpacked_bytes
                    ):
                        raise _bad("the archive's sizes do not match its contents")
                    out.write(chunk)


def _extract_tar(archive: Path, dest: Path, *, max_members: int, max_unpacked_bytes: int) -> None:
    try:
        with tarfile.open(archive, mode="r:*") as tf:
            total = 0
            count = 0
            for member in tf:
                count += 1
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
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(member)
                if src is None:
                    raise _bad(f"archive member {member.name!r} cannot be read")
                with src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, 1024 * 1024)
    except tarfile.TarError as exc:
        raise _bad(f"the archive is corrupt ({exc})") from exc
