"""Run one job: claim it, copy in its inputs, train through the engine, store the artifacts,
and end it through the lifecycle.

Failure model: a SIGKILLed worker leaves a stale heartbeat and an unacknowledged message;
whichever comes first, the broker's redelivery or the reaper, hands the job to another
worker, which restores the last checkpoint from storage and resumes. SIGTERM checkpoints and
hands the job back. A worker that finds it no longer owns its job stops within about a second.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import session_factory
from app.jobs import lifecycle
from app.queue import enqueue_job
from app.storage import Storage, get_storage
from app.tables import Job
from contract.config import DistillConfig
from workers import artifacts, scratch
from workers.checkpoints import CheckpointMirror, checkpoint_prefix, trim_finished
from workers.claim import claim, fair_choice, is_running_elsewhere, worker_identity
from workers.distill.trainer import Stopped, run
from workers.failures import failure
from workers.inputs import resolve
from workers.progress import Heartbeat, JobCallbacks, LostOwnership, db_retry

log = logging.getLogger(__name__)


def run_job(
    job_id: str, *, worker: str, shutdown_requested: Callable[[], bool] = lambda: False
) -> str:
    """'ran', 'refused', or 'watch' (another worker holds the job: look again later)."""
    settings, sessions = get_settings(), session_factory()
    owner = worker_identity(worker)
    chosen = fair_choice(sessions, job_id)
    job = claim(sessions, chosen, worker=owner, settings=settings)
    if chosen != job_id:
        enqueue_job(job_id)  # this message ran another tenant's job; its own waits for a new one
    if job is None:
        return "watch" if is_running_elsewhere(sessions, chosen) else "refused"
    storage = get_storage()
    with (
        Heartbeat(sessions, job.id, owner, settings.heartbeat_interval_seconds),
        scratch.run_folder(settings, job.id) as folder,
    ):
        checkpoints = CheckpointMirror(
            storage, checkpoint_prefix(job.tenant_id, job.id), folder / "work"
        )
        callbacks = JobCallbacks(
            sessions=sessions,
            job_id=job.id,
            tenant_id=job.tenant_id,
            owner=owner,
            settings=settings,
            checkpoints=checkpoints,
            shutdown_requested=shutdown_requested,
        )
        ended = _train(job, callbacks, checkpoints, storage=storage, folder=folder)
    if ended:
        scratch.forget_job(settings, job.id)
        trim_finished(sessions, storage, job.id)  # all but what a later init_from reads
    return "ran"


def _train(
    job: Job,
    callbacks: JobCallbacks,
    checkpoints: CheckpointMirror,
    *,
    storage: Storage,
    folder: Path,
) -> bool:
    """Run the engine and end the job; True once the job reached a final status here."""
    try:
        return _train_and_end(job, callbacks, checkpoints, storage=storage, folder=folder)
    except LostOwnership:
        # Another worker took the job over: its row, events and checkpoints are the truth now.
        log.warning("job %s: this worker no longer owns it; stopped without writing", job.id)
        return False


def _train_and_end(
    job: Job,
    callbacks: JobCallbacks,
    checkpoints: CheckpointMirror,
    *,
    storage: Storage,
    folder: Path,
) -> bool:
    owner = callbacks.owner
    try:
        inputs = resolve(callbacks.sessions, job, storage=storage, settings=callbacks.settings)
        checkpoints.restore()
        result = run(
            DistillConfig.model_validate(job.config),
            teacher=inputs.teacher,
            train=inputs.train,
            validation=inputs.validation,
            workdir=checkpoints.workdir,
            callbacks=callbacks,
            init_model=inputs.init_model,
            init_checkpoint=inputs.init_checkpoint,
        )
        callbacks.flush()
        callbacks.check_owner()  # a stale owner uploads nothing over the new owner's run
        uploaded = artifacts.upload(
            storage, result, tenant_id=job.tenant_id, job_id=job.id, folder=folder
        )

        def succeed(s: Session) -> bool:
            if not lifecycle.succeed(s, job, owner=owner, metrics=result.metrics):
                return False  # another worker owns the job now: record nothing
            artifacts.record(s, uploaded, tenant_id=job.tenant_id, job_id=job.id)
            return True

        return _end(callbacks, succeed)
    except Stopped:
        callbacks.flush()
        if callbacks.stop_reason == "cancel":
            return _end(callbacks, lambda s: lifecycle.confirm_cancel(s, job, owner=owner))
        if callbacks.stop_reason == "shutdown":
            _end(callbacks, lambda s: lifecycle.hand_back(s, job, owner=owner))
        else:
            log.warning("job %s: this worker no longer owns it; stopped", job.id)
        return False
    except LostOwnership:
        raise
    except Exception as exc:
        code, message = failure(exc, job_id=job.id)
        return _end(
            callbacks, lambda s: lifecycle.fail(s, job, code=code, message=message, owner=owner)
        )


def _end(callbacks: JobCallbacks, move: Callable[[Session], bool]) -> bool:
    """One transition in its own transaction, through a database restart; its messages
    (the webhook, a requeue) go out after the commit."""

    def transaction() -> bool:
        with callbacks.sessions.begin() as s:
            return move(s)

    return db_retry(callbacks.settings, transaction)
