"""A job's artifacts: listing them and finding one, always inside the tenant's job."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.artifacts import repository
from app.artifacts.models import Artifact
from app.errors import AppError
from app.jobs.service import get_job


def list_artifacts(session: Session, *, tenant_id: str, job_id: str) -> Sequence[Artifact]:
    get_job(session, tenant_id=tenant_id, job_id=job_id)  # job_not_found before an empty list
    return repository.list_for_job(session, tenant_id=tenant_id, job_id=job_id)


def get_artifact(session: Session, *, tenant_id: str, job_id: str, name: str) -> Artifact:
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job.artifacts_expired_at is not None:
        raise AppError(
            "artifact_expired",
            f"the artifacts of job '{job_id}' expired on "
            f"{job.artifacts_expired_at.isoformat(timespec='seconds')} under the tenant's "
            "retention",
            410,
        )
    artifact = repository.get(session, tenant_id=tenant_id, job_id=job_id, name=name)
    if artifact is None:
        raise AppError("artifact_not_found", f"job '{job_id}' has no artifact '{name}'", 404)
    return artifact
