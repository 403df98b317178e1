"""50 jobs queued at once by two tenants, run by two workers: all finish, the tenants take
turns, and the queue, the rows and the artifacts agree at the end."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.artifacts.models import Artifact
from app.auth.service import create_key
from app.config import get_settings
from app.db import session_factory
from app.jobs.models import Job, JobEvent
from app.main import create_app
from app.storage import get_storage
from tests.factories import TINY_SENTIMENT, zip_folder
from tests.jobs.conftest import TINY_STUDENT
from tests.stray import cancel_stray_queued_jobs
from tests.workerproc import start_worker, stop_worker

pytestmark = pytest.mark.e2e
JOBS_PER_TENANT = 25
DEADLINE_S = 1200  # a hang guard, not a performance bound
QUICK = {"student": TINY_STUDENT,
         "hyperparameters": {"epochs": 1, "batch_size": 32, "max_seq_length": 32},
         "export": {"onnx": False, "int8": False, "latency_runs": 1}}


@pytest.fixture()
def tenants(database: str) -> Iterator[dict[str, TestClient]]:
    clients = {}
    for name in ("load-a", "load-b"):
        with session_factory().begin() as s:
            _, key = create_key(s, tenant_id=name)
        clients[name] = TestClient(create_app(), headers={"Authorization": f"Bearer {key}"})
    yield clients
    for c in clients.values():
        c.close()


@pytest.fixture()
def two_workers(tmp_path: Path, database: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    cancel_stray_queued_jobs()
    procs = [start_worker(tmp_path / f"w{i}.log", name=f"load{i}") for i in range(2)]
    yield procs
    for p in procs:
        stop_worker(p, timeout=60)


def submit(client: TestClient, teacher_dir: Path) -> list[str]:
    content = (TINY_SENTIMENT / "train.jsonl").read_bytes()
    ds = client.post("/v1/datasets", files={"file": ("t.jsonl", content)}).json()["id"]
    teacher = client.post("/v1/models", files={"file": ("t.zip", zip_folder(teacher_dir))})
    body = {"teacher": teacher.json()["id"], "dataset": ds, **QUICK}
    ids = []
    for _ in range(JOBS_PER_TENANT):
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def until(predicate: Any, workers: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert all(w.poll() is None for w in workers), "a worker died"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def test_fifty_jobs_two_tenants_two_workers(tenants: dict[str, TestClient],
                                            two_workers: list[subprocess.Popen[bytes]],
                                            tiny_teacher_dir: Path) -> None:
    a_ids = submit(tenants["load-a"], tiny_teacher_dir)  # tenant A's whole burst first...
    b_ids = submit(tenants["load-b"], tiny_teacher_dir)  # ...then tenant B's
    all_ids = set(a_ids) | set(b_ids)

    def done() -> bool:
        with session_factory()() as s:
            statuses = s.scalars(select(Job.status).where(Job.id.in_(all_ids))).all()
        return all(st in ("succeeded", "failed", "cancelled") for st in statuses)

    until(done, two_workers)
    broker = redis.Redis.from_url(get_settings().broker_url)
    until(lambda: broker.llen(get_settings().queue_name) == 0 and broker.hlen("unacked") == 0,
          two_workers)

    with session_factory()() as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(all_ids)))}
        starts = s.scalars(select(JobEvent).where(JobEvent.job_id.in_(all_ids),
                                                  JobEvent.type == "job_started")
                           .order_by(JobEvent.id)).all()
        first_b = s.scalar(select(JobEvent.id).where(JobEvent.job_id == b_ids[0],
                                                     JobEvent.type == "job_created"))
        artifacts = s.scalars(select(Artifact).where(Artifact.job_id.in_(all_ids))).all()

    # Everything finished exactly once.
    assert {j.status for j in jobs.values()} == {"succeeded"}
    assert all(j.attempts == 1 and j.step == j.total_steps > 0 for j in jobs.values())
    assert sorted(e.job_id for e in starts) == sorted(all_ids)

    # Fairly interleaved: once B had queued work, no tenant started more than two jobs in a
    # row while the other still had jobs waiting.
    order = [jobs[e.job_id].tenant_id for e in starts if e.id > first_b]
    remaining = {"load-a": order.count("load-a"), "load-b": order.count("load-b")}
    run, previous = 0, None
    for tenant in order:
        run = run + 1 if tenant == previous else 1
        previous = tenant
        remaining[tenant] -= 1
        other = "load-b" if tenant == "load-a" else "load-a"
        if remaining[other] > 0:
            assert run <= 2, f"{tenant} started {run} jobs in a row: {order}"

    # Rows and files agree: two artifacts a job, each on disk with its recorded size.
    storage = get_storage()
    assert len(artifacts) == 2 * len(all_ids)
    for artifact in artifacts:
        path = storage.local_path(artifact.storage_key)
        assert path.is_file() and path.stat().st_size == artifact.size_bytes
