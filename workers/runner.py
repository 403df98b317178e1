"""Run one job: claim it (compare-and-set), train through the engine, record everything in SQL.

Failure model: a SIGKILLed worker leaves a stale heartbeat and an unacknowledged message;
whichever comes first, the broker's redelivery or the reaper, hands the job to another
worker, which resumes from the last checkpoint. SIGTERM checkpoints and hands the job back.
A worker that finds it no longer owns its job stops at the next step.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from app.artifacts import repository as artifacts_repository
from app.base import utcnow
from app.config import Settings, get_settings
from app.db import session_factory
from app.jobs import repository
from app.jobs.models import JobCheckpoint, JobMetric
from app.queue import enqueue_job, enqueue_webhook
from app.storage import LocalStorage, StorageError, get_storage
from app.tables import Artifact, Dataset, Job
from app.teachers import catalog
from app.teachers import repository as teachers_repository
from contract.config import DistillConfig
from contract.records import Example, read_jsonl
from contract.vocab import JobStatus
from workers.distill.trainer import DistillError, Event, Progress, RunResult, Stopped, run
from workers.recovery import claim, fair_choice, is_running_elsewhere, worker_identity

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRESS_WRITE_INTERVAL_S = 0.5  # cost: one UPDATE + one batched INSERT; the end is always written
CONTENT_TYPES = {
    ".zip": "application/zip",
    ".onnx": "application/octet-stream",
    ".json": "application/json",
}
STORAGE_ERRNOS = {
    28: "the disk is full",
    27: "a file grew past its size limit",
    5: "an I/O error",
    122: "the disk quota is exhausted",
    30: "read-only storage",
}


def _transient(exc: BaseException) -> bool:
    """A lost or refused connection (a database restart), not a bad statement."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def db_retry(settings: Settings) -> Callable[[Callable[[], T]], T]:
    """Run a short transaction, retrying while the database restarts (bounded)."""

    def call(fn: Callable[[], T]) -> T:
        return retry(
            retry=retry_if_exception(_transient),
            stop=stop_after_delay(settings.db_outage_tolerance_seconds),
            wait=wait_exponential(multiplier=0.25, max=5),
            reraise=True,
            before_sleep=lambda s: log.warning(
                "database unavailable, retrying: %s", s.outcome and s.outcome.exception()
            ),
        )(fn)()

    return call


@dataclass
class JobCallbacks:
    """The engine's callbacks, backed by short transactions on the job row."""

    sessions: sessionmaker[Session]
    job_id: str
    tenant_id: str
    owner: str
    settings: Settings
    shutdown_requested: Callable[[], bool] = lambda: False
    stop_reason: str | None = None
    _stage: str | None = None
    _last_write: float = 0.0
    _pending: dict[str, Any] = field(default_factory=dict)
    _series: list[JobMetric] = field(default_factory=list)
    _last_losses: dict[str, float] = field(default_factory=dict)

    def _db(self, fn: Callable[[], T]) -> T:
        return db_retry(self.settings)(fn)

    def on_config(self, config: DistillConfig) -> None:
        """The row keeps the configuration that actually ran (a hub teacher's width is known
        only now)."""
        resolved = config.model_dump(mode="json")

        def write() -> None:
            with self.sessions.begin() as s:
                repository.update_running(s, self.job_id, owner=self.owner, config=resolved)

        self._db(write)

    def on_progress(self, p: Progress) -> None:
        self._pending = {"stage": p.stage, "step": p.step, "total_steps": p.total_steps}
        if p.losses:  # stage markers (evaluate, export) carry no optimizer step
            self._last_losses = dict(p.losses)
            self._series.append(
                JobMetric(
                    job_id=self.job_id,
                    tenant_id=self.tenant_id,
                    step=p.step,
                    stage=p.stage,
                    learning_rate=p.learning_rate,
                    losses=dict(p.losses),
                )
            )
        now = time.monotonic()
        if p.stage != self._stage or now - self._last_write >= PROGRESS_WRITE_INTERVAL_S:
            self._stage = p.stage
            self.flush()

    def flush(self) -> None:
        """Progress and the buffered per-step series, in one short transaction."""
        if not self._pending and not self._series:
            return
        pending, series = self._pending, self._series

        def write() -> None:
            with self.sessions.begin() as s:
                if pending:
                    repository.update_running(s, self.job_id, owner=self.owner, **pending)
                # fresh rows each try: a failed flush must not leave them bound to a session
                repository.add_metrics(
                    s,
                    [
                        JobMetric(
                            job_id=m.job_id,
                            tenant_id=m.tenant_id,
                            step=m.step,
                            stage=m.stage,
                            learning_rate=m.learning_rate,
                            losses=m.losses,
                        )
                        for m in series
                    ],
                )

        self._db(write)
        self._last_write = time.monotonic()
        self._pending, self._series = {}, []

    def on_event(self, e: Event) -> None:
        # Every step up to a checkpoint is durable before the checkpoint is: a resumed run
        # re-trains (and re-records) only the steps after it, so the series has no hole.
        self.flush()

        def write() -> None:
            with self.sessions.begin() as s:
                repository.add_event(
                    s,
                    job_id=self.job_id,
                    tenant_id=self.tenant_id,
                    type=e.type,
                    message=e.message,
                    data=e.data,
                    level=e.level,
                )
                if e.type == "stage_started" and (stage := e.data.get("stage")):
                    repository.update_running(s, self.job_id, owner=self.owner, stage=stage)
                if e.type == "checkpoint_saved" and (path := e.data.get("path")):
                    size = Path(path).stat().st_size if Path(path).is_file() else 0
                    repository.add_checkpoint(
                        s,
                        JobCheckpoint(
                            job_id=self.job_id,
                            tenant_id=self.tenant_id,
                            step=int(e.data["step"]),
                            stage=self._stage,
                            path=str(path),
                            losses=self._last_losses,
                            size_bytes=size,
                        ),
                    )

        self._db(write)
        if e.type == "stage_started" and (stage := e.data.get("stage")):
            self._stage = stage

    def should_stop(self) -> bool:
        """Polled every step: a cancel, a worker shutdown, or a lost claim stops the run."""
        if self.shutdown_requested():
            self.stop_reason = "shutdown"
            return True
        try:
            with self.sessions() as s:
                cancel, status, worker = repository.control_flags(s, self.job_id)
        except DBAPIError:
            log.warning("database unavailable; training on", exc_info=True)
            return False
        if status != JobStatus.running or worker != self.owner:
            self.stop_reason = "lost"
            return True
        if cancel:
            self.stop_reason = "cancel"
            return True
        return False


class Heartbeat(threading.Thread):
    """Keeps heartbeat_at fresh during long non-step phases (loading, evaluation, export)."""

    def __init__(
        self, sessions: sessionmaker[Session], job_id: str, owner: str, interval: float
    ) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.sessions, self.job_id, self.owner, self.interval = sessions, job_id, owner, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                with self.sessions.begin() as s:
                    repository.beat(s, self.job_id, owner=self.owner)
            except DBAPIError:
                log.warning("heartbeat missed: database unavailable")


def _examples(storage: LocalStorage, key: str) -> list[Example]:
    with storage.open(key) as f:
        return read_jsonl(f)


def _teacher_ref(session: Session, job: Job, *, storage: LocalStorage, settings: Settings) -> str:
    if job.teacher_source == "hub":
        return job.teacher  # from_pretrained fetches it, or fails with teacher_not_found
    ref = _model_ref(
        session, job.teacher, tenant_id=job.tenant_id, storage=storage, settings=settings
    )
    if ref == job.teacher:
        raise DistillError("teacher_not_found", f"catalog model '{job.teacher}' is gone")
    return ref


def _dataset_key(session: Session, dataset_id: str) -> str:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise DistillError("dataset_not_found", f"dataset '{dataset_id}' is gone")
    return dataset.storage_key


def workdir_for(settings: Settings, job_id: str) -> Path:
    """Checkpoints live on the shared storage volume, so any worker can resume them."""
    return settings.storage_dir.resolve() / "work" / job_id


def _model_ref(
    session: Session, ref: str, *, tenant_id: str, storage: LocalStorage, settings: Settings
) -> str:
    """An uploaded model id or catalog name as a local folder; anything else is a hub id."""
    if ref.startswith("mdl_"):
        model = teachers_repository.get(session, tenant_id=tenant_id, model_id=ref)
        if model is None:
            raise DistillError("model_not_found", f"uploaded model '{ref}' is gone")
        return str(storage.local_path(model.storage_key))
    path = catalog.resolve(ref, settings.model_dir)
    return str(path) if path is not None else ref


def _config_for(
    session: Session, job: Job, *, storage: LocalStorage, settings: Settings
) -> DistillConfig:
    config = DistillConfig.model_validate(job.config)
    if config.student.init == "model" and config.student.init_model:
        config = config.model_copy(
            update={
                "student": config.student.model_copy(
                    update={
                        "init_model": _model_ref(
                            session,
                            config.student.init_model,
                            tenant_id=job.tenant_id,
                            storage=storage,
                            settings=settings,
                        )
                    }
                )
            }
        )
    if job.init_from:
        checkpoint = workdir_for(settings, job.init_from["job"]) / "checkpoints" / "last.pt"
        if not checkpoint.is_file():
            raise DistillError(
                "checkpoint_not_found",
                f"job '{job.init_from['job']}' has no checkpoint left to start from",
            )
        config = config.model_copy(
            update={
                "student": config.student.model_copy(
                    update={"init": "checkpoint", "init_model": str(checkpoint)}
                )
            }
        )
    return config


def _zip_folder(folder: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())


def _store_artifacts(session: Session, job: Job, result: RunResult, storage: LocalStorage) -> None:
    with tempfile.TemporaryDirectory(prefix="distillery-artifacts-") as tmp:
        student_zip = Path(tmp) / "student.zip"
        _zip_folder(result.export_dir, student_zip)
        metrics_json = Path(tmp) / "metrics.json"
        metrics_json.write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
        for path in [student_zip, metrics_json, *result.onnx_files]:
            key = f"tenants/{job.tenant_id}/jobs/{job.id}/artifacts/{path.name}"
            stored = storage.put_file(key, path)
            artifacts_repository.replace(
                session,
                Artifact(
                    job_id=job.id,
                    tenant_id=job.tenant_id,
                    name=path.name,
                    content_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
                    size_bytes=stored.size_bytes,
                    sha256=stored.sha256,
                    storage_key=key,
                ),
            )


def _end(
    sessions: sessionmaker[Session],
    job: Job,
    owner: str,
    *,
    status: str,
    event: str,
    message: str,
    level: str = "info",
    data: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    with sessions.begin() as s:
        if not repository.transition(
            s, job.id, from_status=JobStatus.running, owner=owner, to_status=status, **values
        ):
            return False
        repository.add_event(
            s,
            job_id=job.id,
            tenant_id=job.tenant_id,
            type=event,
            message=message,
            data=data or {},
            level=level,
        )
        return True


_RUST_IO_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors reports an I/O failure


def _os_error_in(exc: BaseException) -> OSError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        if match := _RUST_IO_ERROR.search(str(seen)):
            return OSError(int(match.group(1)), str(seen))
        seen = seen.__cause__ or seen.__context__
    return None


def _storage_message(exc: OSError) -> str:
    what = STORAGE_ERRNOS.get(exc.errno or 0, exc.strerror or "a write failed")
    return f"storage failed while saving the job's files: {what}"


def run_job(
    job_id: str, *, worker: str, shutdown_requested: Callable[[], bool] = lambda: False
) -> str:
    """'ran', 'refused', or 'watch' (another worker holds the job: look again later)."""
    settings = get_settings()
    sessions = session_factory()
    storage = get_storage()
    owner = worker_identity(worker)
    chosen = fair_choice(sessions, job_id)
    job = claim(sessions, chosen, worker=owner, settings=settings)
    if chosen != job_id:
        # This message ran another tenant's job; the job it named waits for a new one.
        enqueue_job(job_id)
    if job is None:
        return "watch" if is_running_elsewhere(sessions, chosen) else "refused"
    callbacks = JobCallbacks(
        sessions=sessions,
        job_id=job.id,
        tenant_id=job.tenant_id,
        owner=owner,
        settings=settings,
        shutdown_requested=shutdown_requested,
    )
    heartbeat = Heartbeat(sessions, job.id, owner, settings.heartbeat_interval_seconds)
    heartbeat.start()
    ended = False
    try:
        with sessions() as s:
            teacher = _teacher_ref(s, job, storage=storage, settings=settings)
            train_key = _dataset_key(s, job.dataset_id)
            val_key = (
                _dataset_key(s, job.validation_dataset_id) if job.validation_dataset_id else None
            )
            config = _config_for(s, job, storage=storage, settings=settings)
        train = _examples(storage, train_key)
        validation = _examples(storage, val_key) if val_key else None
        result = run(
            config,
            teacher=teacher,
            train=train,
            validation=validation,
            workdir=workdir_for(settings, job.id),
            callbacks=callbacks,
        )
        callbacks.flush()
        with sessions.begin() as s:
            _store_artifacts(s, job, result, storage)
            ended = repository.transition(
                s,
                job.id,
                from_status=JobStatus.running,
                owner=owner,
                to_status=JobStatus.succeeded,
                metrics=result.metrics,
                stage="done",
                finished_at=utcnow(),
            )
            if ended:
                repository.add_event(
                    s,
                    job_id=job.id,
                    tenant_id=job.tenant_id,
                    type="job_succeeded",
                    message="student ready",
                    data={"metrics": result.metrics},
                )
            else:
                s.rollback()  # another worker owns the job now: record nothing
    except Stopped:
        callbacks.flush()
        if callbacks.stop_reason == "cancel":
            ended = _end(
                sessions,
                job,
                owner,
                status=JobStatus.cancelled,
                event="job_cancelled",
                message="cancelled while running; the last checkpoint is kept",
                finished_at=utcnow(),
            )
        elif callbacks.stop_reason == "shutdown" and _end(
            sessions,
            job,
            owner,
            status=JobStatus.queued,
            event="job_requeued",
            level="warning",
            message="the worker is shutting down; checkpointed and handed back to the queue",
            data={"reason": "worker_shutdown"},
            worker=None,
            enqueued_at=utcnow(),
        ):
            enqueue_job(job.id)
        else:
            log.warning("job %s: this worker no longer owns it; stopped", job.id)
    except DistillError as exc:
        ended = _end(
            sessions,
            job,
            owner,
            status=JobStatus.failed,
            event="job_failed",
            message=exc.message,
            level="error",
            data={"code": exc.code},
            error_code=exc.code,
            error_message=exc.message,
            finished_at=utcnow(),
        )
    except StorageError as exc:
        ended = _end(
            sessions,
            job,
            owner,
            status=JobStatus.failed,
            event="job_failed",
            message=str(exc),
            level="error",
            data={"code": "storage_error"},
            error_code="storage_error",
            error_message=str(exc),
            finished_at=utcnow(),
        )
    except Exception as exc:
        # A failing write often arrives wrapped by a library (torch, safetensors, onnx).
        os_error = _os_error_in(exc)
        log.exception("job %s %s", job.id, "hit a storage failure" if os_error else "crashed")
        code, message = (
            ("storage_error", _storage_message(os_error))
            if os_error
            else ("internal_error", "the worker hit an unexpected error; it has been logged")
        )
        ended = _end(
            sessions,
            job,
            owner,
            status=JobStatus.failed,
            event="job_failed",
            message=message,
            level="error",
            data={"code": code},
            error_code=code,
            error_message=message,
            finished_at=utcnow(),
        )
    finally:
        heartbeat.stopped.set()
    if ended and job.webhook_url:
        try:
            enqueue_webhook(job.id)
        except Exception:
            log.exception("could not queue the webhook of %s", job.id)
    return "ran"
