from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.artifacts.models import Artifact


def list_for_job(session: Session, *, tenant_id: str, job_id: str) -> Sequence[Artifact]:
    return session.scalars(
        select(Artifact)
        .where(Artifact.job_id == job_id, Artifact.tenant_id == tenant_id)
        .order_by(Artifact.name)
    ).all()


def get(session: Session, *, tenant_id: str, job_id: str, name: str) -> Artifact | None:
    return session.scalar(
        select(Artifact).where(
            Artifact.job_id == job_id, Artifact.tenant_id == tenant_id, Artifact.name == name
        )
    )


def replace(session: Session, artifact: Artifact) -> None:
    """Record an artifact, replacing a row left by an earlier attempt of the same job."""
    session.execute(
        delete(Artifact).where(Artifact.job_id == artifact.job_id, Artifact.name == artifact.name)
    )
    session.add(artifact)
