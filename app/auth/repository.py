from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session

from app.artifacts.models import Artifact
from app.auth.models import ApiKey, Tenant
from app.datasets.models import Dataset
from app.jobs.models import Job
from app.teachers.models import UploadedModel
from contract.vocab import JobStatus


def get_tenant(session: Session, tenant_id: str) -> Tenant | None:
    return session.get(Tenant, tenant_id)


def lock_tenant(session: Session, tenant_id: str) -> Tenant | None:
    """The tenant row, locked (FOR UPDATE) until the transaction ends: the quota check and the
    insert it allows run one tenant's upload at a time. SQLite (the one-command default) has no
    row locks and ignores it; there the race stays, narrowed to its single writer."""
    return session.scalar(
        select(Tenant)
        .where(Tenant.id == tenant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def retention_overrides(session: Session) -> dict[str, int]:
    """Tenants that set their own retention: {tenant id: days}."""
    rows = session.execute(
        select(Tenant.id, Tenant.retention_days).where(Tenant.retention_days.is_not(None))
    ).all()
    return {r[0]: r[1] for r in rows if r[1] is not None}


def add(session: Session, row: Tenant | ApiKey) -> None:
    session.add(row)
    session.flush()


def tenant_of_active_key(session: Session, key_hash: str) -> str | None:
    """One indexed lookup per request, one column back (no ORM object to build)."""
    return session.scalar(
        select(ApiKey.tenant_id).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )


def get_key(session: Session, key_id: str) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def keys(session: Session, *, tenant_id: str | None) -> Sequence[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return session.scalars(query).all()


def active_jobs(session: Session, tenant_id: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(
                Job.tenant_id == tenant_id, Job.status.in_([JobStatus.queued, JobStatus.running])
            )
        )
        or 0
    )


def stored_bytes(session: Session, tenant_id: str) -> int:
    """Every byte storage holds for the tenant: datasets as stored, models unpacked, each job's
    checkpoints, and the artifacts of jobs whose artifacts have not expired."""
    parts = union_all(
        *(
            select(func.coalesce(func.sum(column), 0).label("n")).where(
                table.tenant_id == tenant_id
            )
            for table, column in (
                (Dataset, Dataset.stored_bytes),
                (UploadedModel, UploadedModel.stored_bytes),
                (Job, Job.stored_bytes),
            )
        ),
        select(func.coalesce(func.sum(Artifact.size_bytes), 0).label("n"))
        .join(Job, Job.id == Artifact.job_id)
        .where(Artifact.tenant_id == tenant_id, Job.artifacts_expired_at.is_(None)),
    ).subquery()
    return int(session.scalar(select(func.sum(parts.c.n))) or 0)
