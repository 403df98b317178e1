"""A job's event log: pages of it, and the live Server-Sent Events stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from sqlalchemy.orm import Session

from app.db import session_factory
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


def _fetch(job_id: str, after: int | None) -> tuple[list[EventPublic], str | None]:
    with session_factory()() as s:
        status_now = repository.job_status(s, job_id)  # read before the events: none is missed
        rows = repository.events_page(s, job_id=job_id, after=after, limit=STREAM_BATCH)
        return [EventPublic.model_validate(r) for r in rows], status_now


async def stream(job_id: str, after: int | None) -> AsyncIterator[dict[str, str]]:
    """SSE items from the event after `after` on, ending once the job has ended."""
    last = after
    while True:
        events, status_now = await anyio.to_thread.run_sync(_fetch, job_id, last)
        for event in events:
            last = event.id
            yield {"id": str(event.id), "event": event.type, "data": event.model_dump_json()}
        if not events:
            if status_now is None or status_now in TERMINAL:
                return
            await anyio.sleep(STREAM_POLL_S)
