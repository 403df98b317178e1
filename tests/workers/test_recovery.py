"""Taking over jobs from dead workers: claim() on a stale heartbeat, the reaper, the cap."""

from __future__ import annotations

from datetime import timedelta

import redis
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.base import utcnow
from app.config import get_settings
from app.db import session_factory
from app.jobs.models import Job, JobEvent
from tests.factories import queued_job_ids
from workers.claim import claim
from workers.progress import JobCallbacks
from workers.reaper import reap_stale_jobs


def _set(job_id: str, **values: object) -> None:
    with session_factory().begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def _job(job_id: str) -> Job:
    with session_factory()() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _silent_for(seconds: float) -> object:
    return utcnow() - timedelta(seconds=seconds)


def test_stale_running_job_is_taken_over_and_a_fresh_one_is_not(queued_job: str) -> None:
    sessions = session_factory()
    assert claim(sessions, queued_job, worker="dead-worker") is not None
    assert claim(sessions, queued_job, worker="eager") is None  # heartbeat is fresh
    _set(queued_job, heartbeat_at=_silent_for(get_settings().heartbeat_stale_seconds + 1))
    taken = claim(sessions, queued_job, worker="rescuer")
    assert taken is not None and taken.worker == "rescuer" and taken.attempts == 2
    assert claim(sessions, queued_job, worker="third") is None  # rescuer's heartbeat is fresh
    with sessions() as s:
        started = s.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == queued_job, JobEvent.type == "job_started")
            .order_by(JobEvent.id)
        ).all()
    assert [e.data["takeover"] for e in started] == [False, True]


def test_attempts_cap_fails_the_job(queued_job: str) -> None:
    _set(
        queued_job,
        status="running",
        worker="gone",
        attempts=get_settings().max_attempts,
        heartbeat_at=_silent_for(get_settings().heartbeat_stale_seconds + 1),
    )
    assert claim(session_factory(), queued_job, worker="rescuer") is None
    job = _job(queued_job)
    assert (job.status, job.error_code) == ("failed", "worker_lost")
    assert str(get_settings().max_attempts) in (job.error_message or "")


def test_reaper_requeues_a_vanished_worker_s_job_and_resends_lost_messages(
    queued_job: str,
    committing_client: TestClient,
    queue: redis.Redis,
) -> None:
    settings = get_settings()
    assert claim(session_factory(), queued_job, worker="vanished") is not None
    queue.delete(settings.queue_name)  # the worker took the only message with it
    _set(queued_job, heartbeat_at=_silent_for(settings.heartbeat_stale_seconds + 1))
    assert queued_job in reap_stale_jobs()
    job = _job(queued_job)
    assert (job.status, job.worker) == ("queued", None)
    assert queued_job_ids(queue) == [queued_job]
    assert reap_stale_jobs() == []  # nothing more to do: the message was just sent

    with session_factory().begin() as s:  # this job is the only queued one from here on
        s.execute(
            update(Job)
            .where(Job.status == "queued", Job.id != queued_job)
            .values(status="cancelled")
        )
    _set(queued_job, enqueued_at=_silent_for(settings.requeue_queued_after_seconds + 1))
    assert reap_stale_jobs() == []  # a long wait alone is no reason: its message is there

    queue.delete(settings.queue_name)  # a broker restart loses the queued message
    assert reap_stale_jobs() == [queued_job]
    assert queued_job_ids(queue) == [queued_job]


def test_reaper_fails_a_job_at_the_attempts_cap(queued_job: str) -> None:
    settings = get_settings()
    _set(
        queued_job,
        status="running",
        worker="gone",
        attempts=settings.max_attempts,
        heartbeat_at=_silent_for(settings.heartbeat_stale_seconds + 1),
    )
    assert reap_stale_jobs() == [queued_job]
    assert _job(queued_job).error_code == "worker_lost"


def test_a_worker_that_lost_its_claim_stops(queued_job: str) -> None:
    sessions = session_factory()
    job = claim(sessions, queued_job, worker="slow")
    assert job is not None
    callbacks = JobCallbacks(
        sessions=sessions,
        job_id=job.id,
        tenant_id=job.tenant_id,
        owner="slow",
        settings=get_settings(),
    )
    assert callbacks.should_stop() is False
    _set(queued_job, worker="rescuer")  # another worker took it over meanwhile
    assert callbacks.should_stop() is True and callbacks.stop_reason == "lost"
