"""Shared request dependencies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from app.auth.service import authenticate
from app.db import session_factory


def get_session() -> Iterator[Session]:
    """Request-scoped session; the request boundary commits, services never do."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()


# scope="function": the boundary commits before the response is sent, so what a route answered
# is durable when the client reads it, and the outbox (app.queue) has sent its messages.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def current_tenant(
    session: SessionDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> str:
    """The tenant that owns the presented API key; 401 without a valid one."""
    return authenticate(session, authorization)


TenantDep = Annotated[str, Depends(current_tenant)]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="retry-safe key: the same key and body return the first result",
    ),
]
