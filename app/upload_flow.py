"""The one shape of every upload route: cap, spool, replay or create, record, commit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app import idempotency
from app.auth.service import check_storage_quota, upload_limit
from app.config import get_settings
from app.uploads import SpooledUpload, spool


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
    """Spool under the tenant's cap, replay an idempotent retry, check the storage quota,
    create (validating everything), store the response for the key, then commit."""
    settings = get_settings()
    upload = await spool(
        file,
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
        check_storage_quota(
            session, settings=settings, tenant_id=tenant, incoming_bytes=upload.size_bytes
        )
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
