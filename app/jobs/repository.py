from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, aliased

from app.artifacts.models import Artifact
from app.base import utcnow
from app.jobs.models import Job, JobCheckpoint, JobEvent, JobMetric, WebhookDelivery
from app.locks import RowLock, locked
from contract.vocab import JobStatus


def add(session: Session, job: Job) -> Job:
    session.add(job)
    session.flush()
    return job


def get(session: Session, *, tenant_id: str, job_id: str, lock: RowLock = None) -> Job | None:
    query = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
    if lock is not None:  # a locked read must see the row as it is now, not as first loaded
        query = query.execution_options(populate_existing=True)
    return session.scalar(locked(query, lock))


def active(session: Session, *, tenant_id: str) -> Sequence[Job]:
    """The tenant's queued and running jobs (at most its active-jobs limit, 100 by default)."""
    return session.scalars(
        select(Job).where(
            Job.tenant_id == tenant_id, Job.status.in_([JobStatus.queued, JobStatus.running])
        )
    ).all()


def delete_job(session: Session, job_id: str) -> None:
    """The row and everything recorded about it. Postgres would cascade; SQLite enforces
    foreign keys only when asked, so each table is named."""
    for table in (JobEvent, JobMetric, JobCheckpoint, WebhookDelivery, Artifact):
        session.execute(delete(table).where(table.job_id == job_id))
    session.execute(
        delete(Job).where(Job.id == job_id).execution_options(synchronize_session=False)
    )


def get_by_id(session: Session, job_id: str) -> Job | None:
    """Worker-side read: the task carries only the id."""
    return session.get(Job, job_id, populate_existing=True)


def get_by_id_locked(session: Session, job_id: str) -> Job | None:
    """Worker-side read that holds the row (FOR UPDATE) until the transaction ends."""
    return session.scalar(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def page(
    session: Session,
    *,
    tenant_id: str,
    limit: int,
    after: str | None,
    status: str | None,
    created_after: datetime | None,
) -> Sequence[Job]:
    query = select(Job).where(Job.tenant_id == tenant_id)
    if after is not None:
        query = query.where(Job.id < after)
    if status is not None:
        query = query.where(Job.status == status)
    if created_after is not None:
        query = query.where(Job.created_at > created_after)
    return session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)).all()


def transition(
    session: Session,
    job_id: str,
    *,
    from_status: str | set[str],
    to_status: str,
    owner: str | None = None,
    heartbeat_before: datetime | None = None,
    **values: Any,
) -> bool:
    """Compare-and-set on status (and optionally the owning worker, or a stale heartbeat):
    True only for the one caller whose guard matched. Only app/jobs/lifecycle.py calls it."""
    allowed = {from_status} if isinstance(from_status, str) else from_status
    query = update(Job).where(Job.id == job_id, Job.status.in_(allowed))
    if owner is not None:
        query = query.where(Job.worker == owner)
    if heartbeat_before is not None:
        query = query.where(Job.heartbeat_at < heartbeat_before)
    result = session.execute(
        query.values(status=to_status, **values).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def beat(session: Session, job_id: str, *, owner: str) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running, Job.worker == owner)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def control_flags(session: Session, job_id: str) -> tuple[bool, str | None, str | None]:
    """(cancel requested, status, owning worker), read once per training step."""
    row = session.execute(
        select(Job.cancel_requested, Job.status, Job.worker).where(Job.id == job_id)
    ).one_or_none()
    return (bool(row[0]), row[1], row[2]) if row else (False, None, None)


def fairest_queued(session: Session, *, limit: int) -> Sequence[str]:
    """Queued job ids, fairest first: tenants with fewer running jobs, then the tenant whose
    last start is oldest, then the oldest job. Several, in case another worker wins one."""
    running = aliased(Job)
    started = aliased(Job)
    running_count = (
        select(func.count())
        .where(running.tenant_id == Job.tenant_id, running.status == JobStatus.running)
        .correlate(Job)
        .scalar_subquery()
    )
    last_start = (
        select(func.max(started.started_at))
        .where(started.tenant_id == Job.tenant_id)
        .correlate(Job)
        .scalar_subquery()
    )
    query = (
        select(Job.id)
        .where(Job.status == JobStatus.queued)
        .order_by(running_count, last_start.asc().nulls_first(), Job.id)
        .limit(limit)
    )
    return session.scalars(query).all()


def stale_running(session: Session, *, heartbeat_before: datetime) -> Sequence[Job]:
    return session.scalars(
        select(Job).where(Job.status == JobStatus.running, Job.heartbeat_at < heartbeat_before)
    ).all()


def unsent_queued(session: Session, *, enqueued_before: datetime) -> Sequence[Job]:
    return session.scalars(
        select(Job)
        .where(Job.status == JobStatus.queued, Job.enqueued_at < enqueued_before)
        .order_by(Job.enqueued_at)
    ).all()


def count_queued(session: Session) -> int:
    return (
        session.scalar(select(func.count()).select_from(Job).where(Job.status == JobStatus.queued))
        or 0
    )


def update_running(session: Session, job_id: str, *, owner: str, **values: Any) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running, Job.worker == owner)
        .values(heartbeat_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def due_to_expire(
    session: Session,
    *,
    finished_before: datetime,
    tenant_ids: Sequence[str] | None = None,
    other_than: Sequence[str] = (),
    limit: int = 500,
) -> Sequence[str]:
    """Ids of finished jobs that ended before the cutoff and still hold their artifacts: of
    `tenant_ids` only, or of every tenant but `other_than`. Oldest first, at most `limit` (the
    next sweep takes the rest)."""
    query = select(Job.id).where(
        Job.status.in_([JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled]),
        Job.finished_at < finished_before,
        Job.artifacts_expired_at.is_(None),
    )
    if tenant_ids is not None:
        query = query.where(Job.tenant_id.in_(tenant_ids))
    if other_than:
        query = query.where(Job.tenant_id.not_in(other_than))
    return session.scalars(query.order_by(Job.finished_at).limit(limit)).all()


def untrimmed(session: Session, *, limit: int = 100) -> Sequence[str]:
    """Ended jobs that hold more in storage than their last checkpoint: the ones the reaper
    failed (their worker was gone, so nobody trimmed the work folder) or a trim that failed.
    A trimmed job holds exactly its last checkpoint's bytes, or none."""
    last_size = (
        select(JobCheckpoint.size_bytes)
        .where(JobCheckpoint.job_id == Job.id)
        .order_by(JobCheckpoint.id.desc())
        .limit(1)
        .correlate(Job)
        .scalar_subquery()
    )
    query = select(Job.id).where(
        Job.status.in_([JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled]),
        Job.artifacts_expired_at.is_(None),
        Job.stored_bytes > func.coalesce(last_size, 0),
    )
    return session.scalars(query.order_by(Job.finished_at).limit(limit)).all()


def mark_expired(session: Session, job_id: str, *, at: datetime) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(artifacts_expired_at=at, stored_bytes=0)
        .execution_options(synchronize_session=False)
    )


def set_stored_bytes(session: Session, job_id: str, stored_bytes: int) -> None:
    """What storage holds under the job's checkpoints prefix, once a finished job's work folder
    is trimmed or expired (a running job's goes with its progress, guarded by its owner)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(stored_bytes=stored_bytes)
        .execution_options(synchronize_session=False)
    )


def add_event(
    session: Session,
    *,
    job_id: str,
    tenant_id: str,
    type: str,
    message: str,
    data: dict[str, Any],
    level: str = "info",
) -> None:
    session.add(
        JobEvent(
            job_id=job_id, tenant_id=tenant_id, type=type, message=message, data=data, level=level
        )
    )


def events_page(
    session: Session, *, job_id: str, after: int | None, limit: int
) -> Sequence[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        query = query.where(JobEvent.id > after)
    return session.scalars(query.order_by(JobEvent.id).limit(limit)).all()


def job_status(session: Session, job_id: str) -> str | None:
    return session.scalar(select(Job.status).where(Job.id == job_id))


def add_metrics(session: Session, rows: list[JobMetric]) -> None:
    session.add_all(rows)


def metrics_series(session: Session, *, job_id: str) -> Sequence[JobMetric]:
    return session.scalars(
        select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.step, JobMetric.id)
    ).all()


def events_of_type(session: Session, *, job_id: str, type: str) -> Sequence[JobEvent]:
    return session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.type == type)
        .order_by(JobEvent.id)
    ).all()


def add_checkpoint(session: Session, checkpoint: JobCheckpoint) -> None:
    session.add(checkpoint)


def checkpoints(session: Session, *, job_id: str) -> Sequence[JobCheckpoint]:
    return session.scalars(
        select(JobCheckpoint).where(JobCheckpoint.job_id == job_id).order_by(JobCheckpoint.id)
    ).all()


def add_delivery(session: Session, delivery: WebhookDelivery) -> None:
    session.add(delivery)


def deliveries_page(
    session: Session, *, job_id: str, after: int | None, limit: int
) -> Sequence[WebhookDelivery]:
    """Oldest first, one row past the page (has_more)."""
    query = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    if after is not None:
        query = query.where(WebhookDelivery.id > after)
    return session.scalars(query.order_by(WebhookDelivery.id).limit(limit + 1)).all()


def delivery(session: Session, *, message_id: str, attempt: int) -> WebhookDelivery | None:
    return session.scalar(
        select(WebhookDelivery).where(
            WebhookDelivery.message_id == message_id, WebhookDelivery.attempt == attempt
        )
    )


def claim_delivery(session: Session, delivery_id: int, *, stale_before: datetime) -> bool:
    """pending -> sending (or a sending one whose worker went silent): True for one caller."""
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            (WebhookDelivery.state == "pending")
            | ((WebhookDelivery.state == "sending") & (WebhookDelivery.claimed_at < stale_before)),
        )
        .values(state="sending", claimed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def finish_delivery(
    session: Session, delivery_id: int, *, status_code: int | None, error: str | None
) -> None:
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.state == "sending")
        .values(
            state="failed" if error else "succeeded",
            succeeded=error is None,
            status_code=status_code,
            error=error,
        )
        .execution_options(synchronize_session=False)
    )


def overdue_deliveries(
    session: Session, *, due_before: datetime, claimed_before: datetime, limit: int
) -> Sequence[int]:
    """Pending deliveries whose message should have run by now, and sending ones whose worker
    went silent, oldest first."""
    return session.scalars(
        select(WebhookDelivery.id)
        .where(
            ((WebhookDelivery.state == "pending") & (WebhookDelivery.due_at < due_before))
            | ((WebhookDelivery.state == "sending") & (WebhookDelivery.claimed_at < claimed_before))
        )
        .order_by(WebhookDelivery.id)
        .limit(limit)
    ).all()
