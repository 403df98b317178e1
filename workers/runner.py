"""Run one job: claim it (compare-and-set), train through the engine, record everything in SQL."""

from __future__ import annotations

import json
import logging
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.all_models import Artifact, Dataset, Job
from app.artifacts import repository as artifacts_repository
from app.config import Settings, get_settings
from app.db import session_factory, utcnow
from app.jobs import repository
from app.jobs.models import JobCheckpoint, JobMetric, JobStatus
from app.models import catalog
from app.models import repository as models_repository
from app.queue import enqueue_webhook
from app.storage import LocalStorage, StorageError, get_storage
from workers.distill.config import DistillConfig
from workers.distill.records import Example, read_jsonl
from workers.distill.trainer import DistillError, Event, Progress, RunResult, Stopped, run

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 0.5  # cost: one UPDATE; the final state is always written
CONTENT_TYPES = {".zip": "application/zip", ".onnx": "application/octet-stream",
                 ".json": "application/json"}


@dataclass
class JobCallbacks:
    """The engine's callbacks, backed by short transactions on the job row."""

    sessions: sessionmaker[Session]
    job_id: str
    tenant_id: str
    _stage: str | None = None
    _last_write: float = 0.0
    _pending: dict[str, Any] = field(default_factory=dict)
    _series: list[JobMetric] = field(default_factory=list)
    _last_losses: dict[str, float] = field(default_factory=dict)

    def on_progress(self, p: Progress) -> None:
        self._pending = {"stage": p.stage, "step": p.step, "total_steps": p.total_steps}
        if p.losses:  # stage markers (evaluate, export) carry no optimizer step
            self._last_losses = dict(p.losses)
            self._series.append(JobMetric(
                job_id=self.job_id, tenant_id=self.tenant_id, step=p.step, stage=p.stage,
                learning_rate=p.learning_rate, losses=dict(p.losses)))
        now = time.monotonic()
        if p.stage != self._stage or now - self._last_write >= PROGRESS_WRITE_INTERVAL_S:
            self._stage = p.stage
            self.flush()

    def flush(self) -> None:
        """Progress and the buffered per-step series, in one short transaction."""
        if not self._pending and not self._series:
            return
        with self.sessions.begin() as s:
            if self._pending:
                repository.update_running(s, self.job_id, **self._pending)
            repository.add_metrics(s, self._series)
        self._last_write = time.monotonic()
        self._pending = {}
        self._series = []

    def on_event(self, e: Event) -> None:
        with self.sessions.begin() as s:
            repository.add_event(s, job_id=self.job_id, tenant_id=self.tenant_id, type=e.type,
                                 message=e.message, data=e.data, level=e.level)
            if e.type == "stage_started" and (stage := e.data.get("stage")):
                repository.update_running(s, self.job_id, stage=stage)
                self._stage = stage
            if e.type == "checkpoint_saved" and (path := e.data.get("path")):
                repository.add_checkpoint(s, JobCheckpoint(
                    job_id=self.job_id, tenant_id=self.tenant_id, step=int(e.data["step"]),
                    stage=self._stage, path=str(path), losses=self._last_losses,
                    size_bytes=Path(path).stat().st_size if Path(path).is_file() else 0))

    def should_stop(self) -> bool:
        with self.sessions() as s:
            return repository.cancel_requested(s, self.job_id)


def _examples(storage: LocalStorage, key: str) -> list[Example]:
    with storage.open(key) as f:
        return read_jsonl(f)


def _teacher_ref(session: Session, job: Job, *, storage: LocalStorage, settings: Settings) -> str:
    if job.teacher_source == "upload":
        model = models_repository.get(session, tenant_id=job.tenant_id, model_id=job.teacher)
        if model is None:
            raise DistillError("teacher_not_found", f"uploaded model '{job.teacher}' is gone")
        return str(storage.local_path(model.storage_key))
    if job.teacher_source == "catalog":
        path = catalog.resolve(job.teacher, settings.model_dir)
        if path is None:
            raise DistillError("teacher_not_found", f"catalog model '{job.teacher}' is gone")
        return str(path)
    return job.teacher  # a hub id: from_pretrained fetches it, or fails with teacher_not_found


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
        files = [student_zip, metrics_json, *result.onnx_files]
        for path in files:
            key = f"tenants/{job.tenant_id}/jobs/{job.id}/artifacts/{path.name}"
            stored = storage.put_file(key, path)
            artifacts_repository.replace(session, Artifact(
                job_id=job.id, tenant_id=job.tenant_id, name=path.name,
                content_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
                size_bytes=stored.size_bytes, sha256=stored.sha256, storage_key=key))


def _fail(sessions: sessionmaker[Session], job: Job, code: str, message: str) -> None:
    with sessions.begin() as s:
        repository.transition(s, job.id, from_status=JobStatus.running,
                              to_status=JobStatus.failed, error_code=code,
                              error_message=message, finished_at=utcnow())
        repository.add_event(s, job_id=job.id, tenant_id=job.tenant_id, type="job_failed",
                             message=message, data={"code": code}, level="error")


def claim(sessions: sessionmaker[Session], job_id: str, *, worker: str) -> Job | None:
    """queued -> running for exactly one caller; a duplicate delivery gets None."""
    with sessions.begin() as s:
        job = repository.get_by_id(s, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return None
        now = utcnow()
        if not repository.transition(s, job_id, from_status=JobStatus.queued,
                                     to_status=JobStatus.running, started_at=now,
                                     heartbeat_at=now, worker=worker, stage="preparing",
                                     attempts=Job.attempts + 1):
            log.info("job %s is %s, not queued; not running it", job_id, job.status)
            return None
        repository.add_event(s, job_id=job_id, tenant_id=job.tenant_id, type="job_started",
                             message=f"started on {worker}", data={"worker": worker})
    with sessions() as s:
        return repository.get_by_id(s, job_id)


def _notify(job: Job) -> None:
    if job.webhook_url:
        try:
            enqueue_webhook(job.id)
        except Exception:
            log.exception("could not queue the webhook of %s", job.id)


def run_job(job_id: str, *, worker: str) -> None:
    settings = get_settings()
    sessions = session_factory()
    storage = get_storage()
    job = claim(sessions, job_id, worker=worker)
    if job is None:
        return
    callbacks = JobCallbacks(sessions=sessions, job_id=job.id, tenant_id=job.tenant_id)
    try:
        with sessions() as s:
            teacher = _teacher_ref(s, job, storage=storage, settings=settings)
            train_key = _dataset_key(s, job.dataset_id)
            val_key = _dataset_key(s, job.validation_dataset_id) if job.validation_dataset_id \
                else None
        train = _examples(storage, train_key)
        validation = _examples(storage, val_key) if val_key else None
        config = DistillConfig.model_validate(job.config)
        result = run(config, teacher=teacher, train=train, validation=validation,
                     workdir=settings.storage_dir.resolve() / "work" / job.id,
                     callbacks=callbacks)
        callbacks.flush()
        with sessions.begin() as s:
            _store_artifacts(s, job, result, storage)
            repository.transition(s, job.id, from_status=JobStatus.running,
                                  to_status=JobStatus.succeeded, metrics=result.metrics,
                                  stage="done", finished_at=utcnow())
            repository.add_event(s, job_id=job.id, tenant_id=job.tenant_id,
                                 type="job_succeeded", message="student ready",
                                 data={"metrics": result.metrics})
    except Stopped:
        callbacks.flush()
        with sessions.begin() as s:
            repository.transition(s, job.id, from_status=JobStatus.running,
                                  to_status=JobStatus.cancelled, finished_at=utcnow())
            repository.add_event(s, job_id=job.id, tenant_id=job.tenant_id,
                                 type="job_cancelled", message="cancelled while running",
                                 data={})
    except DistillError as exc:
        _fail(sessions, job, exc.code, exc.message)
    except StorageError as exc:
        _fail(sessions, job, "storage_error", str(exc))
    except Exception:
        log.exception("job %s crashed", job.id)
        _fail(sessions, job, "internal_error",
              "the worker hit an unexpected error; it has been logged")
    _notify(job)


def _dataset_key(session: Session, dataset_id: str) -> str:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise DistillError("dataset_not_found", f"dataset '{dataset_id}' is gone")
    return dataset.storage_key
