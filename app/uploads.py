"""Copy an upload to a temp file under a size cap, hashing as it goes; never read it whole."""

from __future__ import annotations

import hashlib
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from fastapi import UploadFile

from app.errors import AppError

CHUNK = 1024 * 1024


@dataclass
class SpooledUpload:
    path: Path
    size_bytes: int
    sha256: str
    filename: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


async def spool(upload: UploadFile, *, max_bytes: int, suffix: str = "") -> SpooledUpload:
    digest = hashlib.sha256()
    size = 0
    tmp = tempfile.NamedTemporaryFile(prefix="distillery-upload-", suffix=suffix, delete=False)
    path = Path(tmp.name)
    try:
        with tmp:
            while chunk := await upload.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise AppError(
                        "file_too_large",
                        f"the file is larger than the {max_bytes} byte limit",
                        413,
                        field="file",
                    )
                digest.update(chunk)
                tmp.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise AppError("file_empty", "the uploaded file is empty", 422, field="file")
    return SpooledUpload(
        path=path,
        size_bytes=size,
        sha256=digest.hexdigest(),
        filename=safe_filename(upload.filename),
    )


def safe_filename(name: str | None) -> str:
    """The last path part without control characters (Postgres refuses NUL; logs and terminals
    should not see escapes), at most 255 characters; the name is only ever shown, never opened."""
    base = Path((name or "").replace("\\", "/")).name
    base = "".join(c for c in base if unicodedata.category(c) not in ("Cc", "Cs")).strip()
    return base[:255] or "upload"
