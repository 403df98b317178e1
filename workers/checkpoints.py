"""A job's checkpoints live in storage, so any worker can resume the job: restored into the
run's scratch folder before the engine starts, mirrored back after every save, and trimmed to
what a later `init_from` reads once the job has ended (workers/retention.py, torch-free)."""

from __future__ import annotations

from pathlib import Path

from app.keys import checkpoint_prefix
from app.storage import Storage, StoredObject, download_prefix
from workers.distill.checkpoint import checkpoint_dir
from workers.retention import stored_bytes, trim_finished

__all__ = ["CheckpointMirror", "checkpoint_prefix", "trim_finished"]


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
