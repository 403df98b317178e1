"""The reaper: jobs whose worker vanished, and queued jobs whose message the broker lost.
Runs on Celery beat in the light reaper worker, on its own queue; no torch. The reaper task then
sweeps overdue webhook deliveries (workers/webhooks.py)."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.orm import Session

from app.base import utcnow
from app.config import Settings, get_settings
from app.db import session_factory
from app.jobs import lifecycle, repository
from app.queue import queued_message_count
from contract.vocab import JobStatus
from workers.claim import lost_message, times_lost

log = logging.getLogger(__name__)


def reap_stale_jobs(settings: Settings | None = None) -> list[str]:
    """Queue again the jobs whose heartbeat went stale (or fail them at the attempts cap) and
    re-send queued jobs whose message a broker restart may have lost. Returns the ids it
    acted on; their messages and webhooks go out after the commit."""
    settings = settings or get_settings()
    with session_factory().begin() as s:
        requeued, failed = _stale(s, settings)
        resent = _lost_messages(s, settings)
    if requeued or failed or resent:
        log.warning("reaper: requeued %s, re-sent %s, failed %s", requeued, resent, failed)
    return requeued + resent + failed


def _stale(s: Session, settings: Settings) -> tuple[list[str], list[str]]:
    stale_before = utcnow() - timedelta(seconds=settings.heartbeat_stale_seconds)
    requeued: list[str] = []
    failed: list[str] = []
    for job in repository.stale_running(s, heartbeat_before=stale_before):
        if times_lost(job) >= settings.max_attempts:
            message = lost_message(job, settings)
            if lifecycle.fail(
                s,
                job,
                code="worker_lost",
                message=message,
                expect=JobStatus.running,
                stale_before=stale_before,
            ):
                failed.append(job.id)
        elif lifecycle.requeue(s, job, stale_before=stale_before):
            requeued.append(job.id)
    return requeued, failed


def _lost_messages(s: Session, settings: Settings) -> list[str]:
    resend_before = utcnow() - timedelta(seconds=settings.requeue_queued_after_seconds)
    waiting = repository.unsent_queued(s, enqueued_before=resend_before)
    if not waiting:
        return []
    # Re-send only as many as the broker lost: a long, healthy backlog has a message for
    # every queued job and needs nothing (messages are doorbells, fairness picks the job).
    in_broker = queued_message_count()
    lost = len(waiting) if in_broker is None else max(0, repository.count_queued(s) - in_broker)
    return [job.id for job in waiting[:lost] if lifecycle.resend(s, job)]
