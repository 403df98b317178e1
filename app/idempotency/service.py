"""Claim a key or replay its first response; record the response once the request is done."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.base import utcnow
from app.errors import AppError
from app.idempotency import repository
from app.idempotency.models import IdempotencyKey

TTL = timedelta(hours=24)


def request_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Replay:
    status_code: int
    body: dict[str, Any]


def begin(
    session: Session, *, tenant_id: str, key: str, endpoint: str, fingerprint: str
) -> Replay | None:
    """Claim the key, or return the stored response of its first use."""
    repository.delete_older_than(session, utcnow() - TTL)
    existing = repository.get(session, tenant_id=tenant_id, key=key)
    if existing is None:
        row = IdempotencyKey(
            tenant_id=tenant_id, key=key, endpoint=endpoint, request_hash=fingerprint
        )
        if repository.claim(session, row):
            return None
        existing = repository.get(session, tenant_id=tenant_id, key=key)
        assert existing is not None  # the claim lost to this row's insert
    if existing.endpoint != endpoint or existing.request_hash != fingerprint:
        raise AppError(
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
            409,
            field="Idempotency-Key",
        )
    if existing.response is None or existing.status_code is None:
        raise AppError(
            "idempotency_key_in_progress",
            "a request with this Idempotency-Key is still in progress; retry shortly",
            409,
            field="Idempotency-Key",
        )
    return Replay(status_code=existing.status_code, body=existing.response)


def finish(
    session: Session, *, tenant_id: str, key: str, status_code: int, body: dict[str, Any]
) -> None:
    row = repository.get(session, tenant_id=tenant_id, key=key)
    if row is not None:
        row.status_code = status_code
        row.response = body
