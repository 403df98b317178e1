"""Shared request dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

import anyio
from anyio.lowlevel import RunVar
from fastapi import Depends, Header
from sqlalchemy.orm import Session

from app.auth.service import authenticate
from app.config import get_settings
from app.db import session_factory
from app.errors import server_busy

# Per event loop (each uvicorn worker has one): the request sessions admitted at once, and the
# threads their commit/close run on. Made on first use, sized from Settings.
_admission: RunVar[tuple[anyio.Semaphore, anyio.CapacityLimiter]] = RunVar("db_admission")


def _admission_for_this_loop() -> tuple[anyio.Semaphore, anyio.CapacityLimiter]:
    try:
        return _admission.get()
    except LookupError:
        size = get_settings().db_pool_size
        pair = anyio.Semaphore(size), anyio.CapacityLimiter(size)
        _admission.set(pair)
        return pair


def _end(session: Session, *, commit: bool) -> None:
    """Commit (or roll back) and hand the connection back: one thread hop, not two."""
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


async def get_session() -> AsyncIterator[Session]:
    """Request-scoped session; the request boundary commits, services never do.

    At most `db_pool_size` requests hold a session at once; the others wait here, on the event
    loop, holding neither a thread nor a connection. Without that gate a request kept its
    connection while it waited for a thread, every thread waited for a connection, and the
    pool ran dry (issue 10: 500s and a 30 s stall at 64 clients). A wait longer than
    `db_pool_timeout_seconds` answers 503 with Retry-After instead.
    """
    gate, threads = _admission_for_this_loop()
    try:
        with anyio.fail_after(get_settings().db_pool_timeout_seconds):
            await gate.acquire()
    except TimeoutError:
        raise server_busy() from None
    try:
        session = session_factory()()
        try:
            yield session
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    partial(_end, session, commit=False), limiter=threads
                )
            raise
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(partial(_end, session, commit=True), limiter=threads)
    finally:
        gate.release()


# scope="function": the session ends (commits, and the outbox sends) when the handler returns,
# before the response is serialised and sent: what a route answered is durable when the client
# reads it, and neither the connection nor the admission is held while the response goes out.
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
