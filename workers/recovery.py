"""Claiming jobs and recovering them from dead workers. No torch: the reaper runs anywhere."""

from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.base import utcnow
from app.config import Settings, get_settings
from app.db import session_factory
from app.jobs import repository
from app.queue import enqueue_job, enqueue_webhook, queued_message_count
from app.tables import Job
from contract.vocab import JobStatus

log = logging.getLogger(__name__)


def worker_identity(hostname: str) -> str:
    """Unique per claim: a restarted process on the same host is a different owner."""
    return f"{hostname}/{os.getpid()}/{secrets.token_hex(4)}"


def _give_up(s: Session, job: Job, *, guard: dict[str, Any], settings: Settings) -> bool:
    message = (
        f"the job's worker was lost {job.attempts} times "
        f"(the limit is {settings.max_attempts}); giving up"
    )
    if repository.transition(
        s,
        job.id,
        to_status=JobStatus.failed,
        error_code="worker_lost",
        error_message=message,
        finished_at=utcnow(),
        **guard,
    ):
        repository.add_event(
            s,
            job_id=job.id,
            tenant_id=job.tenant_id,
            type="job_failed",
            message=message,
            data={"code": "worker_lost"},
            level="error",
        )
        return True
    return False


def claim(
    sessions: sessionmaker[Session], job_id: str, *, worker: str, settings: Settings | None = None
) -> Job | None:
    """Make `worker` the job's one owner, or return None.

    queued -> running; or a running job whose heartbeat went stale (its worker died) is
    taken over, up to max_attempts. Both are compare-and-set, so of any number of
    deliveries and workers exactly one wins."""
    settings = settings or get_settings()
    won = given_up = False
    with sessions.begin() as s:
        job = repository.get_by_id(s, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return None
        now = utcnow()
        stale_before = now - timedelta(seconds=settings.heartbeat_stale_seconds)
        takeover = (
            job.status == JobStatus.running
            and job.heartbeat_at is not None
            and job.heartbeat_at < stale_before
        )
        if job.status != JobStatus.queued and not takeover:
            log.info("job %s is %s, not queued; not running it", job_id, job.status)
            return None
        guard: dict[str, Any] = (
            {"from_status": JobStatus.running, "heartbeat_before": stale_before}
            if takeover
            else {"from_status": JobStatus.queued}
        )
        if job.attempts >= settings.max_attempts:
            given_up = _give_up(s, job, guard=guard, settings=settings)
        elif repository.transition(
            s,
            job_id,
            to_status=JobStatus.running,
            worker=worker,
            heartbeat_at=now,
            started_at=job.started_at or now,
            attempts=Job.attempts + 1,
            **guard,
        ):
            won = True
            repository.add_event(
                s,
                job_id=job_id,
                tenant_id=job.tenant_id,
                type="job_started",
                message=(
                    f"taken over by {worker} after its worker went silent"
                    if takeover
                    else f"started on {worker}"
                ),
                data={"worker": worker, "attempt": job.attempts + 1, "takeover": takeover},
            )
        else:
            log.info("job %s was claimed by another worker first", job_id)
        webhook = bool(job.webhook_url)
    if given_up and webhook:
        enqueue_webhook(job_id)
    if not won:
        return None
    with sessions() as s:
        return repository.get_by_id(s, job_id)


def fair_choice(sessions: sessionmaker[Session], job_id: str) -> str:
    """The job a message for `job_id` should run: itself, unless it is queued and another
    tenant's queued job is fairer (fewer running jobs, waited longer). The broker is the
    doorbell, the job table decides the order, so one tenant's burst cannot starve another."""
    with sessions() as s:
        _, status, _ = repository.control_flags(s, job_id)
        if status != JobStatus.queued:
            return job_id
        fairest = repository.fairest_queued(s, limit=1)
    return fairest[0] if fairest else job_id


def is_running_elsewhere(sessions: sessionmaker[Session], job_id: str) -> bool:
    """True while another worker holds the job: a message refused for that reason should be
    checked again later, in case that worker dies before it finishes."""
    with sessions() as s:
        _, status, _ = repository.control_flags(s, job_id)
    return status == JobStatus.running


def reap_stale_jobs(settings: Settings | None = None) -> list[str]:
    """Find jobs whose worker vanished (stale heartbeat) and queue them again, or fail them
    at the attempts cap; re-send queued jobs whose message a broker restart may have lost.
    Returns the ids it acted on."""
    settings = settings or get_settings()
    sessions = session_factory()
    now = utcnow()
    requeued: list[str] = []
    failed: list[str] = []
    notify: list[str] = []
    with sessions.begin() as s:
        stale_before = now - timedelta(seconds=settings.heartbeat_stale_seconds)
        for job in repository.stale_running(s, heartbeat_before=stale_before):
            guard = {"from_status": JobStatus.running, "heartbeat_before": stale_before}
            if job.attempts >= settings.max_attempts:
                if _give_up(s, job, guard=guard, settings=settings):
                    failed.append(job.id)
                    if job.webhook_url:
                        notify.append(job.id)
            elif repository.transition(
                s, job.id, to_status=JobStatus.queued, worker=None, enqueued_at=now, **guard
            ):  # type: ignore[arg-type]
                repository.add_event(
                    s,
                    job_id=job.id,
                    tenant_id=job.tenant_id,
                    type="job_requeued",
                    level="warning",
                    message="its worker went silent; queued again to resume "
                    "from the last checkpoint",
                    data={"reason": "stale_heartbeat", "step": job.step},
                )
                requeued.append(job.id)
        resend_before = now - timedelta(seconds=settings.requeue_queued_after_seconds)
        waiting = repository.unsent_queued(s, enqueued_before=resend_before)
        if waiting:
            # Re-send only as many as the broker lost: a long, healthy backlog has a message
            # for every queued job and needs nothing (messages are doorbells, fairness picks).
            in_broker = queued_message_count()
            lost = (
                len(waiting)
                if in_broker is None
                else max(0, repository.count_queued(s) - in_broker)
            )
            waiting = waiting[:lost]
        for job in waiting:
            if repository.transition(
                s, job.id, from_status=JobStatus.queued, to_status=JobStatus.queued, enqueued_at=now
            ):
                requeued.append(job.id)
    for job_id in requeued:
        enqueue_job(job_id)  # after commit; a duplicate message is refused by claim()
    for job_id in notify:
        enqueue_webhook(job_id)
    if requeued or failed:
        log.warning("reaper: requeued %s, failed %s", requeued, failed)
    return requeued + failed
