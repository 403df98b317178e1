from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, get_args

import anyio
from fastapi import APIRouter, Header, Query, status
from fastapi.responses import JSONResponse, Response
from pydantic import BeforeValidator
from sse_starlette.sse import EventSourceResponse

from app import idempotency
from app.auth.service import retention_for
from app.config import get_settings
from app.deps import IdempotencyKeyHeader, SessionDep, TenantDbDep, TenantDep
from app.jobs import events, service
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
from app.responses import json_response
from app.storage import get_storage
from app.streams import Slotted, take_slot
from contract.vocab import JobStatusName

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


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses=errors(
        "dataset_not_found",
        "teacher_not_found",
        "model_not_found",
        "job_not_found",
        "idempotency_key_reused",
        "idempotency_key_in_progress",
        "invalid_request",
        (422, "teacher_not_found"),
        (422, "model_not_found"),
        "dataset_incompatible",
        "checkpoint_not_found",
        "checkpoint_incompatible",
        "webhook_url_forbidden",
        "too_many_jobs",
        "queue_unavailable",
        "body_too_large",
    ),
)
async def create_job(
    body: JobCreate,
    db: TenantDbDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create a distillation job and queue it. Retry safely with an `Idempotency-Key`."""
    created = await db.run(
        service.create_job,
        settings=get_settings(),
        request=body,
        idempotency_key=idempotency_key,
    )
    if isinstance(created, idempotency.Replay):
        return JSONResponse(created.body, status_code=created.status_code)
    return json_response(created, status.HTTP_201_CREATED)


@router.get("", response_model=Page[JobPublic], responses=errors("invalid_request"))
async def list_jobs(
    db: TenantDbDep,
    limit: LimitQuery = 20,
    after: AfterQuery = None,
    status: StatusQuery = None,
    created_after: CreatedAfterQuery = None,
) -> Response:
    """Jobs, newest first; `next_cursor` is stable while new jobs arrive."""
    page = await db.read(
        service.list_jobs_page,
        settings=get_settings(),
        limit=limit,
        after=after,
        status=status,
        created_after=created_after,
    )
    return json_response(page)


@router.get("/{job_id}", response_model=JobPublic, responses=errors("job_not_found"))
async def get_job(job_id: str, db: TenantDbDep) -> Response:
    return json_response(
        await db.read(service.get_job_public, settings=get_settings(), job_id=job_id)
    )


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=errors("job_not_found", "job_active", "job_in_use"),
)
async def delete_job(job_id: str, db: TenantDbDep) -> Response:
    """Delete a finished job: its rows, artifacts and checkpoints. A queued or running job
    answers 409 `job_active` (cancel it first); a job whose checkpoint a queued or running job
    starts from (`init_from`) answers 409 `job_in_use`."""
    removal = await db.run(service.delete_job, job_id=job_id)
    await anyio.to_thread.run_sync(removal.apply, get_storage())  # after the commit
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses=errors("job_not_found", "job_not_cancellable", "body_too_large"),
)
def cancel_job(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobPublic:
    """Queued: cancelled at once. Running: stops within about a second, keeping its last checkpoint.
    Idempotent; a job that already succeeded or failed answers 409."""
    job = service.cancel_job(session, tenant_id=tenant, job_id=job_id)
    days = retention_for(session, settings=get_settings(), tenant_id=tenant)
    return service.to_public(job, retention_days=days)


@router.get(
    "/{job_id}/events",
    response_model=Page[EventPublic],
    responses={
        **errors("job_not_found", "invalid_request", "too_many_streams"),
        200: {"content": {"text/event-stream": {}}},
    },
)
async def list_events(
    job_id: str,
    db: TenantDbDep,
    after: Annotated[int | None, Query(ge=0, description="an event id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    stream: Annotated[bool, Query(description="Server-Sent Events")] = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Any:
    """Stage changes, losses, evaluations, checkpoints, warnings, errors. With `stream=true`
    the same events arrive live as SSE, ending when the job ends; reconnect with
    `Last-Event-ID` to resume; a stream also ends after `stream_max_seconds`, and resumes
    the same way. Its database work ends before it starts: it polls with sessions of its own."""
    if stream:
        start = events.resume_point(after, last_event_id)
        tenant = await db.read(events.stream_start, job_id=job_id)
        return Slotted(
            EventSourceResponse(events.stream(job_id, start), ping=15), take_slot(tenant)
        )
    return json_response(await db.read(events.page, job_id=job_id, after=after, limit=limit))


@router.get("/{job_id}/metrics", response_model=MetricsSeries, responses=errors("job_not_found"))
def get_metrics(job_id: str, session: SessionDep, tenant: TenantDep) -> MetricsSeries:
    """Per-step loss components and learning rate, evaluation scores, final metrics."""
    return service.metrics_series(session, tenant_id=tenant, job_id=job_id)


@router.get(
    "/{job_id}/checkpoints",
    response_model=list[CheckpointPublic],
    responses=errors("job_not_found"),
)
def list_checkpoints(job_id: str, session: SessionDep, tenant: TenantDep) -> list[CheckpointPublic]:
    return service.list_checkpoints(session, storage=get_storage(), tenant_id=tenant, job_id=job_id)


DeliveryCursor = Annotated[
    str | None,
    Query(pattern="^[0-9]{1,18}$", description="the next_cursor of the previous page"),
]


@router.get(
    "/{job_id}/webhook-deliveries",
    response_model=Page[WebhookDeliveryPublic],
    responses=errors("job_not_found", "invalid_request"),
)
def list_webhook_deliveries(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    limit: LimitQuery = 20,
    after: DeliveryCursor = None,
) -> Page[WebhookDeliveryPublic]:
    """Every delivery attempt of this job's webhooks, oldest first; a `pending` one is waiting
    for its turn (its first try, or a retry's backoff)."""
    return service.list_deliveries(
        session, tenant_id=tenant, job_id=job_id, limit=limit, after=after
    )
