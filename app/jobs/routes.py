from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, status

from app.config import get_settings
from app.db import SessionDep
from app.deps import TenantDep
from app.errors import AppError
from app.jobs import service
from app.jobs.schemas import JobCreate, JobPublic
from app.pagination import AfterQuery, LimitQuery, Page
from app.queue import enqueue_job

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
StatusQuery = Annotated[
    str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled)$")
]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def create_job(body: JobCreate, session: SessionDep, tenant: TenantDep) -> JobPublic:
    job = service.create_job(session, settings=get_settings(), tenant_id=tenant, request=body)
    session.commit()  # enqueue only what is durably recorded
    try:
        enqueue_job(job.id)
    except Exception as exc:
        log.exception("enqueue failed for %s", job.id)
        service.fail_unqueued(session, job_id=job.id, message="the job queue is unreachable")
        session.commit()
        raise AppError("queue_unavailable", "the job queue is unreachable; the job was not "
                       "started, try again", 503) from exc
    return service.to_public(job)


@router.get("", response_model=Page[JobPublic])
def list_jobs(session: SessionDep, tenant: TenantDep, limit: LimitQuery = 20,
              after: AfterQuery = None, status: StatusQuery = None,
              created_after: datetime | None = None) -> Page[JobPublic]:
    rows, has_more = service.list_jobs(session, tenant_id=tenant, limit=limit, after=after,
                                       status=status, created_after=created_after)
    data = [service.to_public(j) for j in rows]
    return Page(data=data, has_more=has_more, next_cursor=data[-1].id if has_more else None)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    return service.to_public(service.get_job(session, tenant_id=tenant, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    job = service.cancel_job(session, tenant_id=tenant, job_id=job_id)
    session.commit()
    return service.to_public(job)
