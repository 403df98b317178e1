"""The worker's scratch folder: where it materialises, through storage, the files the engine
reads from disk. Nothing in it is the truth; storage and the job row are.

    {root}/runs/{job}-*/         one run's workdir (checkpoints, export), removed after the run
    {root}/cache/{storage key}/  uploaded models, immutable by id, shared by the runs here
    {root}/jobs/{job}/           a job's own inputs (its init checkpoint), kept until it ends

Paths the engine fingerprints (the teacher's folder, the init checkpoint) are stable across
runs and workers with the same root, so a job resumes on any of them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.config import Settings
from app.storage import Storage, download_prefix


def root(settings: Settings) -> Path:
    base = settings.scratch_dir or Path(tempfile.gettempdir()) / "distillery-scratch"
    return base.resolve()


@contextmanager
def run_folder(settings: Settings, job_id: str) -> Iterator[Path]:
    """A fresh folder for one run; removed afterwards (its checkpoints are in storage)."""
    parent = root(settings) / "runs"
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def job_folder(settings: Settings, job_id: str) -> Path:
    return root(settings) / "jobs" / job_id


def forget_job(settings: Settings, job_id: str) -> None:
    shutil.rmtree(job_folder(settings, job_id), ignore_errors=True)


def cached_folder(storage: Storage, prefix: str, settings: Settings) -> Path | None:
    """The objects under `prefix/` as a local folder, downloaded once per scratch root; None
    when storage holds nothing there. Only for immutable objects (an uploaded model)."""
    target = root(settings) / "cache" / prefix
    if target.is_dir():
        return target
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        if not download_prefix(storage, prefix, partial):
            return None
        try:
            os.rename(partial, target)
        except OSError:
            if not target.is_dir():  # not another worker's copy that landed first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
