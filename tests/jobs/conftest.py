"""A real Celery worker process for the end-to-end tests, shared by this package."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import session_factory
from app.jobs.models import JobEvent
from tests.factories import TINY_SENTIMENT, TINY_STUDENT, zip_folder  # noqa: F401  (re-exported)
from tests.stray import cancel_stray_queued_jobs
from tests.workerproc import start_worker, stop_worker

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 600  # a hang guard for jobs of seconds, not a performance bound
TERMINAL = {"succeeded", "failed", "cancelled"}


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


def wait_for(
    client: TestClient,
    job_id: str,
    worker: subprocess.Popen[bytes],
    until: frozenset[str] | set[str] = TERMINAL,
) -> dict[str, Any]:
    """Poll as a client would, until the job reaches a wanted status (or the worker dies)."""
    deadline = time.monotonic() + DEADLINE_S
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        assert worker.poll() is None, "the worker process died"
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {until}: {job}")


def upload_inputs(client: TestClient, teacher_dir: Path) -> tuple[str, str, str]:
    def ds(split: str) -> str:
        content = (TINY_SENTIMENT / f"{split}.jsonl").read_bytes()
        return str(
            client.post("/v1/datasets", files={"file": (f"{split}.jsonl", content)}).json()["id"]
        )

    teacher = client.post("/v1/models", files={"file": ("t.zip", zip_folder(teacher_dir))})
    assert teacher.status_code == 201, teacher.text
    return ds("train"), ds("dev"), str(teacher.json()["id"])


def event_types(job_id: str) -> list[str]:
    with session_factory()() as s:
        return list(
            s.scalars(select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        )
