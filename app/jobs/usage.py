"""Which queued or running jobs use a dataset, a model or another job's checkpoint: what a
delete refuses while they run. Finished jobs keep only the ids, as history."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from app.errors import AppError
from app.jobs import repository
from app.jobs.models import Job

NAMED = 5  # ids a 409 names; the count says how many more


def models_of(job: Job) -> set[str]:
    """Every model the job reads: its teacher, the model its student starts from, the MLM
    that augments its data."""
    config = job.config
    student = config.get("student") or {}
    augmentation = (config.get("distillation") or {}).get("augmentation") or {}
    named = {job.teacher, student.get("init_model"), augmentation.get("mlm_model")}
    return {n for n in named if isinstance(n, str)}


def refuse_if_used(
    session: Session, *, tenant_id: str, code: str, what: str, uses: Callable[[Job], bool]
) -> None:
    """409 `code` naming the tenant's active jobs for which `uses` holds."""
    users = sorted(j.id for j in repository.active(session, tenant_id=tenant_id) if uses(j))
    if not users:
        return
    named = ", ".join(users[:NAMED]) + (
        f" and {len(users) - NAMED} more" if len(users) > NAMED else ""
    )
    raise AppError(
        code,
        f"{what} is used by queued or running job(s) {named}; "
        "cancel them or wait for them to end, then delete it",
        409,
    )
