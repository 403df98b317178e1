"""What a finished job keeps, and for how long.

When a job ends its work folder in storage is trimmed to what a later `init_from` reads
(`trim_finished`: the runner calls it; the sweep catches jobs that ended without their
worker). The retention sweep expires finished jobs past their tenant's retention: artifacts
and checkpoints go, the row stays marked `artifacts_expired_at` (downloads then answer 410
artifact_expired), and this machine's scratch folder loses what no job needs any more.
Runs on Celery beat beside the reaper; no torch."""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.auth import repository as auth_repository
from app.base import utcnow
from app.config import Settings, get_settings
from app.db import session_factory
from app.jobs import repository
from app.keys import checkpoint_prefix, job_prefix
from app.storage import Storage, get_storage
from app.tables import UploadedModel
from contract.vocab import TERMINAL
from workers import scratch

log = logging.getLogger(__name__)


# A checkpoint saved before the student existed cannot seed another job (app/jobs/service.py
# refuses it as init_from), so nothing of such a job's folder is worth keeping.
NO_STUDENT_STAGES = (None, "preparing", "teacher_finetune")


def stored_bytes(storage: Storage, prefix: str) -> int:
    return sum(o.size_bytes for o in storage.list(prefix))


def trim_finished(sessions: sessionmaker[Session], storage: Storage, job_id: str) -> int:
    """Once a job has ended: keep only its last checkpoint file (what `init_from` reads: the
    student, its optimizer state), drop the rest of its work folder in storage (the fine-tuned
    teacher, older files), and record the bytes left. Returns them. Never fails the job: a
    failure here leaves more bytes than needed, counted, for retention or a delete."""
    try:
        with sessions() as s:
            job = repository.get_by_id(s, job_id)
            saved = repository.checkpoints(s, job_id=job_id)
            if job is None:
                return 0
            prefix = checkpoint_prefix(job.tenant_id, job.id)
        last = saved[-1] if saved and saved[-1].stage not in NO_STUDENT_STAGES else None
        for obj in storage.list(prefix):
            if last is None or obj.key != last.path:
                storage.delete(obj.key)
        left = stored_bytes(storage, prefix)
        with sessions.begin() as s:
            repository.set_stored_bytes(s, job_id, left)
        return left
    except Exception:
        log.warning("job %s: could not trim its work folder", job_id, exc_info=True)
        return -1


def sweep(settings: Settings | None = None, *, now: datetime | None = None) -> list[str]:
    """Expire what is due, prune the scratch folder; the ids of the jobs it expired."""
    settings = settings or get_settings()
    now = now or utcnow()
    sessions, storage = session_factory(), get_storage()
    expired = [job for job in _due(sessions, settings, now) if _expire(sessions, storage, job, now)]
    if expired:
        log.info("retention: expired the artifacts of %s", expired)
    with sessions() as s:
        leftover = repository.untrimmed(s)
    for job_id in leftover:  # ended without their worker: the reaper failed them
        trim_finished(sessions, storage, job_id)
    prune_scratch(sessions, settings)
    return expired


def _due(sessions: sessionmaker[Session], settings: Settings, now: datetime) -> list[str]:
    with sessions() as s:
        overrides = auth_repository.retention_overrides(s)
        due: list[str] = []
        for tenant, days in overrides.items():
            cutoff = now - timedelta(days=days)
            due += repository.due_to_expire(s, finished_before=cutoff, tenant_ids=[tenant])
        if settings.retention_days is not None:
            cutoff = now - timedelta(days=settings.retention_days)
            due += repository.due_to_expire(s, finished_before=cutoff, other_than=list(overrides))
    return due


def _expire(sessions: sessionmaker[Session], storage: Storage, job_id: str, now: datetime) -> bool:
    """One job, in its own transaction with its row locked: a new job that starts from its
    checkpoint (init_from, which takes a shared lock) waits, then sees it expired. Storage goes
    first: a crash before the commit leaves the job unmarked, and the next sweep finishes it."""
    with sessions.begin() as s:
        job = repository.get_by_id_locked(s, job_id)
        if job is None or job.artifacts_expired_at is not None:
            return False
        started_from = [
            j.id
            for j in repository.active(s, tenant_id=job.tenant_id)
            if (j.init_from or {}).get("job") == job.id
        ]
        if started_from:  # its checkpoint is being read; the next sweep after they end
            return False
        storage.delete_prefix(job_prefix(job.tenant_id, job.id))
        repository.mark_expired(s, job.id, at=now)
    return True


def prune_scratch(sessions: sessionmaker[Session], settings: Settings) -> list[Path]:
    """This machine's scratch folders that nothing needs: a finished or deleted job's inputs
    and run folders (a SIGKILLed worker leaves them), and cached copies of deleted models.
    It prunes the machine the sweep runs on; a training worker elsewhere removes a job's
    folders itself when it ends the job (runner.py), but keeps its model cache."""
    root = scratch.root(settings)
    folders: list[tuple[Path, str]] = []
    for parent in (root / "jobs", root / "runs"):
        if parent.is_dir():
            folders += [(p, p.name.split("-", 1)[0]) for p in parent.iterdir() if p.is_dir()]
    removed: list[Path] = []
    with sessions() as s:
        for folder, job_id in folders:
            job = repository.get_by_id(s, job_id)
            if job is None or job.status in TERMINAL:
                removed.append(folder)
        models = root / "cache" / "tenants"
        for folder in models.glob("*/models/*") if models.is_dir() else ():
            if s.get(UploadedModel, folder.name) is None:
                removed.append(folder)
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed
