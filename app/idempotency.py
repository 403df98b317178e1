"""Idempotency-Key on POST: the same key and body replay the first response; keys last 24 h."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Header
from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.base import Base, utcnow
from app.errors import AppError

TTL = timedelta(hours=24)
KeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="retry-safe key: the same key and body return the first result",
    ),
]


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    key: Mapped[str] = mapped_column(String(255))
    endpoint: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


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
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - TTL))
    existing = session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key
        )
    )
    if existing is None:
        try:
            with session.begin_nested():
                session.add(
                    IdempotencyKey(
                        tenant_id=tenant_id, key=key, endpoint=endpoint, request_hash=fingerprint
                    )
                )
            return None
        except IntegrityError:
            existing = session.scalar(
                select(IdempotencyKey).where(
                    IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key
                )
            )
            assert existing is not None
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
    row = session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key
        )
    )
    if row is not None:
        row.status_code = status_code
        row.response = body
