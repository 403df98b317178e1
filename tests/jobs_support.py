"""Helpers for the tests that drive a real worker through the API (tests/jobs, tests/load,
tests/recovery): upload a job's inputs, poll a job as a client would, read its event log."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import session_factory
from app.jobs.models import JobEvent
from contract.vocab import TERMINAL
from tests.factories import TINY_SENTIMENT, zip_folder

DEADLINE_S = 600  # a hang guard for jobs of seconds, not a performance bound


def wait_for(
    client: TestClient,
    job_id: str,
    worker: subprocess.Popen[bytes],
    until: frozenset[str] | set[str] = frozenset(TERMINAL),
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
