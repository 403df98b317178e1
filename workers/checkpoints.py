"""A job's checkpoints live in storage, so any worker can resume the job: restored into the
run's scratch folder before the engine starts, mirrored back after every save, and trimmed to
what a later `init_from` reads once the job has ended."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.jobs import repository
from app.keys import checkpoint_prefix
from app.storage import Storage, StoredObject, download_prefix
from workers.distill.checkpoint import checkpoint_dir

__all__ = ["CheckpointMirror", "checkpoint_prefix", "trim_finished"]

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


class CheckpointMirror:
    """The engine's checkpoint folder of one run, kept equal to storage under `prefix`."""

    def __init__(self, storage: Storage, prefix: str, workdir: Path) -> None:
        self.storage = storage
        self.prefix = prefix
        self.workdir = workdir
        self.folder = checkpoint_dir(workdir)
        self._sent: dict[Path, tuple[int, int]] = {}  # (size, mtime) as last sent or fetched

    def restore(self) -> None:
        """What the job's last run saved, where the engine looks for it (nothing: a fresh start)."""
        for path in download_prefix(self.storage, self.prefix, self.folder):
            self._sent[path] = _signature(path)

    def stored_bytes(self) -> int:
        """Everything under the prefix: what the tenant's quota counts for this job."""
        return stored_bytes(self.storage, self.prefix)

    def push(self, saved: Path) -> StoredObject:
        """Send what changed in the folder, the checkpoint the engine just wrote (`saved`) last:
        once the key it returns is recorded, everything that checkpoint needs is in storage."""
        for path in sorted(p for p in self.folder.rglob("*") if _visible(p, self.folder)):
            if path != saved and self._sent.get(path) != _signature(path):
                self._send(path)
        return self._send(saved)

    def _send(self, path: Path) -> StoredObject:
        signature = _signature(path)
        key = f"{self.prefix}/{path.relative_to(self.folder).as_posix()}"
        stored = self.storage.put_file(key, path)
        self._sent[path] = signature
        return stored


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _visible(path: Path, folder: Path) -> bool:
    """A finished file: temp files and folders mid-swap start with a dot or end in .tmp."""
    parts = path.relative_to(folder).parts
    return path.is_file() and not any(p.startswith(".") or p.endswith(".tmp") for p in parts)
