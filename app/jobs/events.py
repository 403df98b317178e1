"""A job's event log: pages of it, and the live Server-Sent Events stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from sqlalchemy.orm import Session

from app.config import get_settings
from app.deps import short_read
from app.errors import AppError
from app.jobs import repository
from app.jobs.schemas import EventPublic
from app.jobs.service import get_job
from app.pagination import Page
from contract.vocab import TERMINAL

STREAM_POLL_S = 0.5  # cost: one indexed SELECT per open stream per poll
STREAM_BATCH = 500


def page(
    session: Session, *, tenant_id: str, job_id: str, after: int | None, limit: int
) -> Page[EventPublic]:
    get_job(session, tenant_id=tenant_id, job_id=job_id)
    rows = repository.events_page(session, job_id=job_id, after=after, limit=limit + 1)
    data = [EventPublic.model_validate(r) for r in rows[:limit]]
    has_more = len(rows) > limit
    return Page(data=data, has_more=has_more, next_cursor=str(data[-1].id) if has_more else None)


def resume_point(after: int | None, last_event_id: str | None) -> int | None:
    """Where a (re)connecting stream starts: the Last-Event-ID header wins over `after`."""
    if last_event_id is None:
        return after
    if not last_event_id.isdigit():
        raise AppError(
            "invalid_request", "Last-Event-ID must be an event id", 422, field="Last-Event-ID"
        )
    return int(last_event_id)


def stream_start(session: Session, *, tenant_id: str, job_id: str) -> str:
    """The tenant, once its job is known to exist (job_not_found before the stream opens)."""
    get_job(session, tenant_id=tenant_id, job_id=job_id)
    return tenant_id


def _fetch(
    session: Session, job_id: str, after: int | None
) -> tuple[list[EventPublic], str | None]:
    status_now = repository.job_status(session, job_id)  # read before the events: none missed
    rows = repository.events_page(session, job_id=job_id, after=after, limit=STREAM_BATCH)
    return [EventPublic.model_validate(r) for r in rows], status_now


async def stream(job_id: str, after: int | None) -> AsyncIterator[dict[str, str]]:
    """SSE items from the event after `after` on, ending once the job has ended, or cleanly
    after `stream_max_seconds` (the client resumes with Last-Event-ID). Each poll takes a
    session of its own for its two SELECTs; between polls the stream holds no connection."""
    last = after
    deadline = anyio.current_time() + get_settings().stream_max_seconds
    while True:
        try:
            events, status_now = await short_read(_fetch, job_id, last)
        except AppError as exc:
            if exc.code != "server_busy":
                raise
            events, status_now = [], ""  # every session taken: try again at the next poll
        for event in events:
            last = event.id
            yield {"id": str(event.id), "event": event.type, "data": event.model_dump_json()}
        if not events:
            if status_now is None or status_now in TERMINAL:
                return
            if anyio.current_time() >= deadline:
                return
            await anyio.sleep(STREAM_POLL_S)
