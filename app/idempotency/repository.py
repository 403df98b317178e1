from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.idempotency.models import IdempotencyKey


def delete_older_than(session: Session, cutoff: datetime) -> None:
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))


def get(session: Session, *, tenant_id: str, key: str) -> IdempotencyKey | None:
    return session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key
        )
    )


def claim(session: Session, row: IdempotencyKey) -> bool:
    """Insert the key in a savepoint; False when a concurrent request holds it already."""
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return False
    return True
