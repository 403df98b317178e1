"""The runner's guards, in-process against the real database (committed rows)."""

from __future__ import annotations

import threading
from pathlib import Path

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


def test_a_stale_owner_s_writes_are_refused_after_a_takeover(
    queued_job: str, tmp_path: Path
) -> None:
    """A database outage longer than the stale time: another worker takes the job over, and
    the old owner's next progress, event or checkpoint write is refused by row count."""
    import pytest

    from app.config import get_settings
    from app.jobs.models import JobCheckpoint, JobMetric
    from app.storage import get_storage
    from workers.checkpoints import CheckpointMirror, checkpoint_prefix
    from workers.distill.callbacks import Event, Progress
    from workers.progress import JobCallbacks, LostOwnership

    sessions, settings = session_factory(), get_settings()
    old = claim(sessions, queued_job, worker="old-owner")
    assert old is not None
    # the old owner's heartbeat is older than this stale time: the takeover of an outage
    stale_now = settings.model_copy(update={"heartbeat_stale_seconds": 1e-6})
    new = claim(sessions, queued_job, worker="new-owner", settings=stale_now)
    assert new is not None and new.worker == "new-owner"

    def callbacks(owner: str) -> JobCallbacks:
        workdir = tmp_path / owner
        mirror = CheckpointMirror(
            get_storage(), checkpoint_prefix(old.tenant_id, queued_job), workdir
        )
        return JobCallbacks(
            sessions=sessions,
            job_id=queued_job,
            tenant_id=old.tenant_id,
            owner=owner,
            settings=settings,
            checkpoints=mirror,
        )

    losses = {"total": 1.0}
    mine = callbacks("new-owner")
    mine.on_progress(Progress("prediction_distill", 5, 10, losses, 1e-4))
    mine.flush()
    before = _job(queued_job)
    events_before = _event_types(queued_job)

    theirs = callbacks("old-owner")
    with pytest.raises(LostOwnership):
        theirs.on_progress(Progress("intermediate_distill", 3, 10, losses, 1e-4))
    with pytest.raises(LostOwnership):
        theirs.on_event(Event("warning", "from the stale owner", {}))
    saved = theirs.checkpoints.folder / "last.pt"  # type: ignore[union-attr]
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"the stale owner's checkpoint")
    with pytest.raises(LostOwnership):
        theirs.on_event(Event("checkpoint_saved", "saved", {"path": str(saved), "step": 3}))

    after = _job(queued_job)
    assert (after.worker, after.step, after.stage) == ("new-owner", 5, "prediction_distill")
    assert after.heartbeat_at == before.heartbeat_at  # not even a heartbeat
    assert _event_types(queued_job) == events_before
    with session_factory()() as s:
        metric_steps = s.scalars(select(JobMetric.step).where(JobMetric.job_id == queued_job))
        assert list(metric_steps) == [5]
        assert not s.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == queued_job)).all()
    prefix = checkpoint_prefix(old.tenant_id, queued_job)
    assert not list(get_storage().list(prefix))  # nothing pushed over the new owner's files


def test_a_worker_refuses_an_outage_tolerance_as_long_as_the_stale_time() -> None:
    import pytest

    from app.config import get_settings
    from workers.progress import check_timings

    settings = get_settings()
    check_timings(settings)  # the tests' own: 3 s against 4 s
    too_long = settings.model_copy(
        update={"db_outage_tolerance_seconds": settings.heartbeat_stale_seconds}
    )
    with pytest.raises(ValueError, match="DB_OUTAGE_TOLERANCE"):
        check_timings(too_long)
