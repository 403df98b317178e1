"""A real Celery worker process for the end-to-end tests, shared by this package."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.config import get_settings
from app.db import session_factory
from app.jobs.models import JobEvent
from tests.factories import TINY_SENTIMENT, zip_folder

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 600  # a hang guard for jobs of seconds, not a performance bound
TERMINAL = {"succeeded", "failed", "cancelled"}
TINY_STUDENT = {"preset": None, "num_layers": 2, "hidden_size": 16, "num_attention_heads": 2,
                "intermediate_size": 32}


@pytest.fixture(scope="package")
def worker_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker") / "worker.log"


@pytest.fixture(scope="package")
def worker(worker_log: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = worker_log
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
             "--pool", "solo", "--concurrency", "1",
             "-Q", f"{get_settings().queue_name},{get_settings().webhook_queue_name}",
             "--loglevel", "INFO", "--hostname", f"e2e-{os.getpid()}@%h",
             "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=os.environ.copy(), stdout=out, stderr=subprocess.STDOUT)
        yield proc
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    if proc.returncode not in (0, -15):
        print(log.read_text()[-5000:])


def wait_for(client: TestClient, job_id: str, worker: subprocess.Popen[bytes],
             until: frozenset[str] | set[str] = TERMINAL) -> dict[str, Any]:
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
        return str(client.post("/v1/datasets", files={"file": (f"{split}.jsonl", content)})
                   .json()["id"])

    teacher = client.post("/v1/models", files={"file": ("t.zip", zip_folder(teacher_dir))})
    assert teacher.status_code == 201, teacher.text
    return ds("train"), ds("dev"), str(teacher.json()["id"])


def event_types(job_id: str) -> list[str]:
    with session_factory()() as s:
        return list(s.scalars(select(JobEvent.type).where(JobEvent.job_id == job_id)
                              .order_by(JobEvent.id)))
