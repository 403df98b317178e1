"""Tests that start workers first cancel jobs other tests left queued, so a worker runs only
the jobs of the test at hand (the fair scheduler would otherwise pick the oldest first)."""

from __future__ import annotations

from sqlalchemy import update

from app.base import utcnow
from app.db import session_factory
from app.jobs.models import Job


def cancel_stray_queued_jobs() -> None:
    with session_factory().begin() as s:
        s.execute(
            update(Job)
            .where(Job.status == "queued")
            .values(status="cancelled", cancel_requested=True, finished_at=utcnow())
        )
