"""Every upload route's one shape: spool under a size cap (hashing as it goes, never reading the
file whole), replay or create, record, commit; all of it on a worker thread, so validating a
large upload never stalls the event loop (issue 12: a 30 MiB JSONL froze /healthz for 11.9 s)."""

from __future__ import annotations

import hashlib
import tempfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio
from fastapi import UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app import idempotency
from app.auth.service import upload_limit
from app.config import get_settings
from app.errors import AppError

CHUNK = 1024 * 1024


def body_limits() -> dict[str, int]:
    """Each upload route's cap on the request body, for BodyLimit; asked per request, so
    settings reloaded after the app was built (as tests do) still apply."""
    settings = get_settings()
    return {"/v1/datasets": settings.max_dataset_bytes, "/v1/models": settings.max_model_bytes}


def json_body_limit() -> int:
    """Every other request body's cap (a job's JSON is a few KiB)."""
    return get_settings().max_json_body_bytes


@dataclass
class SpooledUpload:
    path: Path
    size_bytes: int
    sha256: str
    filename: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


async def spool(upload: UploadFile, *, max_bytes: int, suffix: str = "") -> SpooledUpload:
    return await anyio.to_thread.run_sync(
        partial(spool_file, upload.file, upload.filename, max_bytes=max_bytes, suffix=suffix)
    )


def spool_file(
    source: IO[bytes], filename: str | None, *, max_bytes: int, suffix: str = ""
) -> SpooledUpload:
    """Copy the parsed multipart file into a temp file of ours, a chunk at a time (blocking:
    call it on a worker thread)."""
    digest = hashlib.sha256()
    size = 0
    tmp = tempfile.NamedTemporaryFile(prefix="distillery-upload-", suffix=suffix, delete=False)
    path = Path(tmp.name)
    try:
        with tmp:
            while chunk := source.read(CHUNK):
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
        filename=safe_filename(filename),
    )


def safe_filename(name: str | None) -> str:
    """The last path part without control characters (Postgres refuses NUL; logs and terminals
    should not see escapes), at most 255 characters; the name is only ever shown, never opened."""
    base = Path((name or "").replace("\\", "/")).name
    base = "".join(c for c in base if unicodedata.category(c) not in ("Cc", "Cs")).strip()
    return base[:255] or "upload"


async def handle_upload(
    session: Session,
    *,
    tenant: str,
    file: UploadFile,
    idempotency_key: str | None,
    endpoint: str,
    max_bytes: int,
    create: Callable[[SpooledUpload], BaseModel],
) -> Any:
    """Spool under the tenant's cap, replay an idempotent retry, create (validating everything;
    `create` checks the storage quota against the bytes it will store, in this transaction),
    store the response for the key, then commit: on one worker thread (the multipart body is
    already parsed into `file`), the loop only waits."""
    return await anyio.to_thread.run_sync(
        partial(
            _handle_upload,
            session,
            tenant=tenant,
            source=file.file,
            filename=file.filename,
            idempotency_key=idempotency_key,
            endpoint=endpoint,
            max_bytes=max_bytes,
            create=create,
        )
    )


def _handle_upload(
    session: Session,
    *,
    tenant: str,
    source: IO[bytes],
    filename: str | None,
    idempotency_key: str | None,
    endpoint: str,
    max_bytes: int,
    create: Callable[[SpooledUpload], BaseModel],
) -> Any:
    settings = get_settings()
    upload = spool_file(
        source,
        filename,
        max_bytes=upload_limit(session, settings=settings, tenant_id=tenant, default=max_bytes),
    )
    try:
        if idempotency_key and (
            replay := idempotency.begin(
                session,
                tenant_id=tenant,
                key=idempotency_key,
                endpoint=endpoint,
                fingerprint=idempotency.request_hash(upload.filename, upload.sha256),
            )
        ):
            return JSONResponse(replay.body, status_code=replay.status_code)
        public = create(upload)
    finally:
        upload.discard()
    if idempotency_key:
        idempotency.finish(
            session,
            tenant_id=tenant,
            key=idempotency_key,
            status_code=201,
            body=public.model_dump(mode="json"),
        )
    session.commit()
    return public
