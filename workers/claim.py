"""Which job a message runs, and making this worker its one owner. No torch: cheap to import."""

from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.base import utcnow
from app.config import Settings, get_settings
from app.jobs import lifecycle, repository
from app.tables import Job
from contract.vocab import JobStatus

log = logging.getLogger(__name__)


def worker_identity(hostname: str) -> str:
    """Unique per claim: a restarted process on the same host is a different owner."""
    return f"{hostname}/{os.getpid()}/{secrets.token_hex(4)}"


def times_lost(job: Job) -> int:
    """Claims that ended with a lost worker: every claim but those its worker handed back on
    a graceful shutdown (a rolling deploy must not fail a healthy job)."""
    return job.attempts - job.handed_back


def lost_message(job: Job, settings: Settings) -> str:
    return (
        f"the job's worker was lost {times_lost(job)} times "
        f"(the limit is {settings.max_attempts}); giving up"
    )


def claim(
    sessions: sessionmaker[Session], job_id: str, *, worker: str, settings: Settings | None = None
) -> Job | None:
    """Make `worker` the job's one owner, or return None.

    queued -> running; or a running job whose heartbeat went stale (its worker died) is
    taken over, up to max_attempts, then failed as worker_lost. All are compare-and-set, so
    of any number of deliveries and workers exactly one wins."""
    settings = settings or get_settings()
    with sessions.begin() as s:
        job = repository.get_by_id(s, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return None
        stale_before = utcnow() - timedelta(seconds=settings.heartbeat_stale_seconds)
        takeover = (
            job.status == JobStatus.running
            and job.heartbeat_at is not None
            and job.heartbeat_at < stale_before
        )
        if job.status != JobStatus.queued and not takeover:
            log.info("job %s is %s, not queued; not running it", job_id, job.status)
            return None
        if times_lost(job) >= settings.max_attempts:
            lifecycle.fail(
                s,
                job,
                code="worker_lost",
                message=lost_message(job, settings),
                expect=JobStatus(job.status),
                stale_before=stale_before if takeover else None,
            )
            return None
        won = (
            lifecycle.take_over(s, job, worker=worker, stale_before=stale_before)
            if takeover
            else lifecycle.start(s, job, worker=worker)
        )
    if not won:
        log.info("job %s was claimed by another worker first", job_id)
        return None
    with sessions() as s:
        return repository.get_by_id(s, job_id)


def fair_choice(sessions: sessionmaker[Session], job_id: str) -> str:
    """The job a message for `job_id` should run: itself, unless it is queued and another
    tenant's queued job is fairer (fewer running jobs, waited longer). The broker is the
    doorbell, the job table decides the order, so one tenant's burst cannot starve another."""
    with sessions() as s:
        if repository.job_status(s, job_id) != JobStatus.queued:
            return job_id
        fairest = repository.fairest_queued(s, limit=1)
    return fairest[0] if fairest else job_id


def is_running_elsewhere(sessions: sessionmaker[Session], job_id: str) -> bool:
    """True while another worker holds the job: a message refused for that reason should be
    checked again later, in case that worker dies before it finishes."""
    with sessions() as s:
        return repository.job_status(s, job_id) == JobStatus.running
