from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, get_args

import anyio
from fastapi import APIRouter, Header, Query, status
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator
from sse_starlette.sse import EventSourceResponse

from app import idempotency
from app.config import get_settings
from app.db import session_factory
from app.deps import SessionDep, TenantDep
from app.errors import AppError, error_body
from app.jobs import repository, service
from app.jobs.schemas import (
    CheckpointPublic,
    EventPublic,
    JobCreate,
    JobPublic,
    MetricsSeries,
    WebhookDeliveryPublic,
)
from app.openapi import errors
from app.pagination import AfterQuery, LimitQuery, Page
from app.queue import enqueue_job, enqueue_webhook
from contract.vocab import TERMINAL, JobStatusName

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _iso_datetime(value: object) -> object:
    """Only ISO 8601 text: pydantic would also read '0.5' as a Unix time."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError("expected an ISO 8601 date-time") from exc
    return value


CreatedAfterQuery = Annotated[
    datetime | None, BeforeValidator(_iso_datetime), Query(description="ISO 8601 date-time")
]
StatusQuery = Annotated[str | None, Query(pattern=f"^({'|'.join(get_args(JobStatusName))})$")]
STREAM_POLL_S = 0.5  # cost: one indexed SELECT per open stream per poll


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses=errors(404, 409, 422, 429, 503),
)
def create_job(
    body: JobCreate,
    session: SessionDep,
    tenant: TenantDep,
    idempotency_key: idempotency.KeyHeader = None,
) -> Any:
    """Create a distillation job and queue it. Retry safely with an `Idempotency-Key`."""
    if idempotency_key and (
        replay := idempotency.begin(
            session,
            tenant_id=tenant,
            key=idempotency_key,
            endpoint="POST /v1/jobs",
            fingerprint=idempotency.request_hash(body.model_dump(mode="json")),
        )
    ):
        return JSONResponse(replay.body, status_code=replay.status_code)
    job = service.create_job(session, settings=get_settings(), tenant_id=tenant, request=body)
    public = service.to_public(job).model_copy(update={"webhook_secret": job.webhook_secret})
    if idempotency_key:
        idempotency.finish(
            session,
            tenant_id=tenant,
            key=idempotency_key,
            status_code=201,
            body=public.model_dump(mode="json"),
        )
    session.commit()  # enqueue only what is durably recorded
    try:
        enqueue_job(job.id)
    except Exception as exc:
        log.exception("enqueue failed for %s", job.id)
        error = AppError(
            "queue_unavailable",
            "the job queue is unreachable; the job was not started, try again",
            503,
        )
        service.fail_unqueued(session, job_id=job.id, message="the job queue is unreachable")
        if idempotency_key:  # a retry must see this failure, not the 201 stored above
            idempotency.finish(
                session,
                tenant_id=tenant,
                key=idempotency_key,
                status_code=503,
                body=error_body(error.code, error.message),
            )
        session.commit()
        raise error from exc
    return public


@router.get("", response_model=Page[JobPublic], responses=errors(422))
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    limit: LimitQuery = 20,
    after: AfterQuery = None,
    status: StatusQuery = None,
    created_after: CreatedAfterQuery = None,
) -> Page[JobPublic]:
    """Jobs, newest first; `next_cursor` is stable while new jobs arrive."""
    rows, has_more = service.list_jobs(
        session,
        tenant_id=tenant,
        limit=limit,
        after=after,
        status=status,
        created_after=created_after,
    )
    data = [service.to_public(j) for j in rows]
    return Page(data=data, has_more=has_more, next_cursor=data[-1].id if has_more else None)


@router.get("/{job_id}", response_model=JobPublic, responses=errors(404))
def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    return service.to_public(service.get_job(session, tenant_id=tenant, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=errors(404, 409))
def cancel_job(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    idempotency_key: idempotency.KeyHeader = None,
) -> JobPublic:
    """Queued: cancelled at once. Running: stops within one step, keeping its last checkpoint.
    Idempotent; a job that already succeeded or failed answers 409."""
    was_queued = service.get_job(session, tenant_id=tenant, job_id=job_id).status == "queued"
    job = service.cancel_job(session, tenant_id=tenant, job_id=job_id)
    session.commit()
    if was_queued and job.status == "cancelled" and job.webhook_url:
        enqueue_webhook(job.id)  # a running job's worker sends its own on the way out
    return service.to_public(job)


@router.get(
    "/{job_id}/events",
    response_model=Page[EventPublic],
    responses={**errors(404, 422), 200: {"content": {"text/event-stream": {}}}},
)
def list_events(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    after: Annotated[int | None, Query(ge=0, description="an event id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    stream: Annotated[bool, Query(description="Server-Sent Events")] = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Any:
    """Stage changes, losses, evaluations, checkpoints, warnings, errors. With `stream=true`
    the same events arrive live as SSE, ending when the job ends; reconnect with
    `Last-Event-ID` to resume."""
    if stream:
        service.get_job(session, tenant_id=tenant, job_id=job_id)
        start = after
        if last_event_id is not None:
            if not last_event_id.isdigit():
                raise AppError(
                    "invalid_request",
                    "Last-Event-ID must be an event id",
                    422,
                    field="Last-Event-ID",
                )
            start = int(last_event_id)
        return EventSourceResponse(_event_stream(job_id, start), ping=15)
    rows, has_more = service.list_events(
        session, tenant_id=tenant, job_id=job_id, after=after, limit=limit
    )
    data = [EventPublic.model_validate(r) for r in rows]
    return Page(data=data, has_more=has_more, next_cursor=str(data[-1].id) if has_more else None)


def _fetch_events(job_id: str, after: int | None) -> tuple[list[EventPublic], str | None]:
    with session_factory()() as s:
        status_now = repository.job_status(s, job_id)  # read before the events: none is missed
        rows = repository.events_page(s, job_id=job_id, after=after, limit=500)
        return [EventPublic.model_validate(r) for r in rows], status_now


async def _event_stream(job_id: str, after: int | None) -> AsyncIterator[dict[str, str]]:
    last = after
    while True:
        events, status_now = await anyio.to_thread.run_sync(_fetch_events, job_id, last)
        for event in events:
            last = event.id
            yield {"id": str(event.id), "event": event.type, "data": event.model_dump_json()}
        if not events:
            if status_now is None or status_now in TERMINAL:
                return
            await anyio.sleep(STREAM_POLL_S)


@router.get("/{job_id}/metrics", response_model=MetricsSeries, responses=errors(404))
def get_metrics(job_id: str, session: SessionDep, tenant: TenantDep) -> MetricsSeries:
    """Per-step loss components and learning rate, evaluation scores, final metrics."""
    return service.metrics_series(session, tenant_id=tenant, job_id=job_id)


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointPublic], responses=errors(404))
def list_checkpoints(job_id: str, session: SessionDep, tenant: TenantDep) -> list[CheckpointPublic]:
    return service.list_checkpoints(session, tenant_id=tenant, job_id=job_id)


@router.get(
    "/{job_id}/webhook-deliveries",
    response_model=list[WebhookDeliveryPublic],
    responses=errors(404),
)
def list_webhook_deliveries(
    job_id: str, session: SessionDep, tenant: TenantDep
) -> list[WebhookDeliveryPublic]:
    """Every delivery attempt of this job's webhooks, oldest first."""
    return service.list_deliveries(session, tenant_id=tenant, job_id=job_id)
