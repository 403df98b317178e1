"""A real Celery worker process for the end-to-end tests, shared by this package."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stray import cancel_stray_queued_jobs
from tests.workerproc import start_worker, stop_worker


@pytest.fixture(scope="package")
def worker_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker") / "worker.log"


@pytest.fixture(scope="package")
def worker(worker_log: Path, database: str) -> Iterator[subprocess.Popen[bytes]]:
    cancel_stray_queued_jobs()
    proc = start_worker(worker_log, name="e2e")
    yield proc
    if stop_worker(proc) not in (0, -15):
        print(worker_log.read_text()[-5000:])
