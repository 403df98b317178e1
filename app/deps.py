"""Shared request dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
from anyio.lowlevel import RunVar
from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from app.auth.service import authenticate, bearer_token, hash_key
from app.config import get_settings
from app.db import read_session_factory, session_factory
from app.errors import server_busy
from app.ratelimit import check_rate

T = TypeVar("T")

# Per event loop (each uvicorn worker has one): the request sessions admitted at once, and the
# threads their work runs on. Made on first use, sized from Settings.
_admission: RunVar[tuple[anyio.Semaphore, anyio.CapacityLimiter]] = RunVar("db_admission")


def _admission_for_this_loop() -> tuple[anyio.Semaphore, anyio.CapacityLimiter]:
    try:
        return _admission.get()
    except LookupError:
        settings = get_settings()
        size = min(settings.api_db_sessions, settings.db_pool_size)
        pair = anyio.Semaphore(size), anyio.CapacityLimiter(size)
        _admission.set(pair)
        return pair


async def _admit(gate: anyio.Semaphore) -> None:
    """Wait on the event loop, holding neither a thread nor a connection; past
    `db_pool_timeout_seconds`, 503 server_busy with Retry-After."""
    try:
        gate.acquire_nowait()  # the usual case: no timer to arm (fail_after's cost, ~4% of a read)
        return
    except anyio.WouldBlock:
        pass
    try:
        with anyio.fail_after(get_settings().db_pool_timeout_seconds):
            await gate.acquire()
    except TimeoutError:
        raise server_busy() from None


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

    At most `api_db_sessions` requests hold a session at once; the others wait here, on the event
    loop, holding neither a thread nor a connection. Without that gate a request kept its
    connection while it waited for a thread, every thread waited for a connection, and the
    pool ran dry (issue 10: 500s and a 30 s stall at 64 clients). A wait longer than
    `db_pool_timeout_seconds` answers 503 with Retry-After instead.
    """
    gate, threads = _admission_for_this_loop()
    await _admit(gate)
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


TENANT_STATE = "tenant_id"  # request.state's name for a tenant that app.keycheck already found


def known_tenant(request: Request) -> str | None:
    """The tenant KeyFirst looked up before the body was read, if it did (requests with a body)."""
    tenant: str | None = getattr(request.state, TENANT_STATE, None)
    return tenant


def current_tenant(
    request: Request,
    session: SessionDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> str:
    """The tenant that owns the presented API key; 401 without a valid one, 429 past its
    rate limit."""
    return known_tenant(request) or admit_key(session, authorization)


def admit_key(session: Session, authorization: str | None) -> str:
    """The key's tenant (401 without a valid key), its request counted against the key's
    rate limit (429 rate_limited past it). Blocking: a query, and Redis where it is used."""
    tenant = authenticate(session, authorization)
    check_rate(hash_key(bearer_token(authorization)))
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]

SessionScope = Callable[[bool], AbstractContextManager[Session]]


@contextmanager
def request_session(read_only: bool) -> Iterator[Session]:
    """One request's unit of work: committed when the work returns, rolled back when it
    raises, closed (the connection back in the pool) either way. Read-only work runs each
    statement in its own transaction (no BEGIN/COMMIT round trips)."""
    session = (read_session_factory if read_only else session_factory)()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


async def get_session_scope() -> SessionScope:
    """Where TenantDb's sessions come from (the tests put theirs in a rolled-back transaction)."""
    return request_session


async def authenticate_first(app: Any, authorization: str | None) -> str:
    """The key's tenant, for middleware that runs before any dependency: 401 without the
    database for a missing or malformed header, else one lookup on a thread, admitted like
    any request session. `app`'s override of get_session_scope (the tests') is honoured."""
    bearer_token(authorization)
    provider = app.dependency_overrides.get(get_session_scope, get_session_scope)
    scope: SessionScope = await provider()
    gate, threads = _admission_for_this_loop()
    await _admit(gate)
    try:
        return await anyio.to_thread.run_sync(
            partial(_authenticate_in, scope, authorization), limiter=threads
        )
    finally:
        gate.release()


async def short_read(work: Callable[..., T], /, *args: Any) -> T:
    """`work(session, *args)` in a read session of its own, admitted like a request's and
    closed when the work returns: what a stream polls with, so that between its polls an
    open stream holds neither a connection nor a thread."""
    gate, threads = _admission_for_this_loop()
    await _admit(gate)
    try:
        return await anyio.to_thread.run_sync(partial(_read_in, work, args), limiter=threads)
    finally:
        gate.release()


def _read_in(work: Callable[..., T], args: tuple[Any, ...]) -> T:
    with request_session(True) as session:
        return work(session, *args)


def _authenticate_in(scope: SessionScope, authorization: str | None) -> str:
    with scope(True) as session:
        return admit_key(session, authorization)


class TenantDb:
    """A request's whole database work as one call on one worker thread: a session, the API
    key's tenant, the work, the commit, the close.

    Against SessionDep + TenantDep (a thread for the key lookup, one for the route, one for
    the commit, and FastAPI's own for re-validating the answer), one hop and a session held
    only while the work runs: about 40% less CPU per request (issue 10). The admission gate
    is the same one, held only around the hop.
    """

    def __init__(
        self, scope: SessionScope, authorization: str | None, *, tenant: str | None = None
    ) -> None:
        self._scope = scope
        self._authorization = authorization
        self._tenant = tenant  # already looked up (app.keycheck): no second lookup

    async def run(self, work: Callable[..., T], /, **kwargs: Any) -> T:
        """`work(session, tenant_id=<the key's tenant>, **kwargs)` in one transaction; 401
        before any work without a valid key, 503 server_busy when no session is free in time."""
        return await self._call(work, kwargs, read_only=False)

    async def read(self, work: Callable[..., T], /, **kwargs: Any) -> T:
        """As `run`, for work that writes nothing: each statement commits on its own."""
        return await self._call(work, kwargs, read_only=True)

    async def _call(self, work: Callable[..., T], kwargs: dict[str, Any], *, read_only: bool) -> T:
        gate, threads = _admission_for_this_loop()
        await _admit(gate)
        try:
            return await anyio.to_thread.run_sync(
                partial(self._in_thread, work, kwargs, read_only), limiter=threads
            )
        finally:
            gate.release()

    def _in_thread(self, work: Callable[..., T], kwargs: dict[str, Any], read_only: bool) -> T:
        with self._scope(read_only) as session:
            tenant = self._tenant or admit_key(session, self._authorization)
            return work(session, tenant_id=tenant, **kwargs)


async def tenant_db(
    request: Request,
    scope: Annotated[SessionScope, Depends(get_session_scope)],
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> TenantDb:
    """A request with a body had its key looked up before the body was read (app.keycheck);
    one without has it looked up in `run`'s one thread hop, 401 before any work."""
    bearer_token(authorization)
    return TenantDb(scope, authorization, tenant=known_tenant(request))


TenantDbDep = Annotated[TenantDb, Depends(tenant_db)]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="retry-safe key: the same key and body return the first result",
    ),
]
