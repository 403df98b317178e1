"""The runner's guards, in-process against the real database (committed rows)."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import session_factory
from app.jobs.models import Job, JobEvent
from workers.claim import claim
from workers.runner import run_job


def _job(job_id: str) -> Job:
    with session_factory()() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _event_types(job_id: str) -> list[str]:
    with session_factory()() as s:
        return list(
            s.scalars(select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        )


def test_two_concurrent_claims_let_exactly_one_worker_run(queued_job: str) -> None:
    sessions = session_factory()
    barrier = threading.Barrier(2)
    results: list[Job | None] = []

    def contender(name: str) -> None:
        barrier.wait()
        results.append(claim(sessions, queued_job, worker=name))

    threads = [threading.Thread(target=contender, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    job = _job(queued_job)
    assert job.status == "running"
    assert job.attempts == 1
    assert job.worker == winners[0].worker
    assert _event_types(queued_job).count("job_started") == 1


def test_duplicate_delivery_of_a_running_job_does_not_train_twice(queued_job: str) -> None:
    assert claim(session_factory(), queued_job, worker="first") is not None
    assert run_job(queued_job, worker="duplicate") == "watch"  # looks again later
    job = _job(queued_job)
    assert (job.status, job.attempts, job.worker) == ("running", 1, "first")
    assert job.step == 0
    assert _event_types(queued_job).count("job_started") == 1


def test_cancelled_job_is_never_started(queued_job: str, committing_client: TestClient) -> None:
    assert committing_client.post(f"/v1/jobs/{queued_job}/cancel").json()["status"] == "cancelled"
    assert run_job(queued_job, worker="late") == "refused"
    job = _job(queued_job)
    assert job.status == "cancelled"
    assert job.started_at is None and job.attempts == 0
    assert "job_started" not in _event_types(queued_job)


def test_message_for_unknown_job_is_dropped(database: str) -> None:
    run_job("job_doesnotexist", worker="w")  # must neither raise nor create anything
    with session_factory()() as s:
        assert s.get(Job, "job_doesnotexist") is None


def test_graceful_hand_backs_are_not_counted_as_lost_workers(queued_job: str) -> None:
    """Three rolling deploys (SIGTERM: checkpoint, hand back) must not fail a healthy job."""
    from app.config import get_settings
    from app.jobs import lifecycle

    sessions = session_factory()
    hand_backs = get_settings().max_attempts
    for i in range(hand_backs):
        job = claim(sessions, queued_job, worker=f"deploy-{i}")
        assert job is not None, f"claim {i + 1} refused"
        with sessions.begin() as s:  # what the runner does when should_stop saw the shutdown
            assert lifecycle.hand_back(s, job, owner=f"deploy-{i}")
    job = claim(sessions, queued_job, worker="after-deploys")
    assert job is not None
    assert (job.status, job.attempts, job.handed_back) == ("running", hand_backs + 1, hand_backs)
    with sessions.begin() as s:
        assert lifecycle.succeed(s, job, owner="after-deploys", metrics={})
    ended = _job(queued_job)
    assert (ended.status, ended.error_code) == ("succeeded", None)
