"""Break real processes mid-training and check that nothing is lost: SIGKILL, SIGTERM and a
PostgreSQL restart. Each test starts its own worker processes (no other worker runs here)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from contract.vocab import TERMINAL
from tests.factories import TINY_STUDENT
from tests.jobs_support import upload_inputs
from tests.stray import cancel_stray_queued_jobs
from tests.workerproc import start_worker, stop_worker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DEADLINE_S = 600


@pytest.fixture()
def workers(tmp_path: Path, database: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    cancel_stray_queued_jobs()
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        stop_worker(proc, timeout=60)


def poll(client: TestClient, job_id: str) -> dict[str, Any] | None:
    """One GET; None while the API's database is restarting."""
    response = client.get(f"/v1/jobs/{job_id}")
    return response.json() if response.status_code == 200 else None


def wait(client: TestClient, job_id: str, predicate: Any) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        job = poll(client, job_id)
        if job is not None and predicate(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id}: condition never held; last {poll(client, job_id)}")


def start_long_job(client: TestClient, teacher_dir: Path) -> str:
    train, dev, teacher = upload_inputs(client, teacher_dir)
    job = client.post(
        "/v1/jobs",
        json={
            "teacher": teacher,
            "dataset": train,
            "validation_dataset": dev,
            "student": TINY_STUDENT,
            "hyperparameters": {"epochs": 20, "batch_size": 16, "max_seq_length": 32},
        },
    ).json()
    return str(job["id"])


def events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    return list(client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"])


def checkpointed(client: TestClient, job_id: str) -> int:
    saved = client.get(f"/v1/jobs/{job_id}/checkpoints").json()
    return int(saved[-1]["step"]) if saved else 0


def assert_whole_history(client: TestClient, job: dict[str, Any]) -> None:
    steps = [s["step"] for s in client.get(f"/v1/jobs/{job['id']}/metrics").json()["steps"]]
    assert steps == list(range(1, job["progress"]["total_steps"] + 1))
    names = {a["name"] for a in client.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    assert {"student.zip", "metrics.json"} <= names


def test_sigkilled_worker_s_job_resumes_on_another_worker(
    committing_client: TestClient,
    tiny_teacher_dir: Path,
    tmp_path: Path,
    workers: list[subprocess.Popen[bytes]],
) -> None:
    client = committing_client
    workers.append(start_worker(tmp_path / "a.log", name="doomed"))
    job_id = start_long_job(client, tiny_teacher_dir)
    wait(client, job_id, lambda j: j["status"] == "running" and checkpointed(client, job_id))
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait()
    saved_step = checkpointed(client, job_id)

    # Nobody tells the new worker: the unacknowledged message comes back by itself.
    workers.append(start_worker(tmp_path / "b.log", name="rescuer"))
    job = wait(client, job_id, lambda j: j["status"] in TERMINAL)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    history = events(client, job_id)
    resumed = [e for e in history if e["type"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["data"]["step"] >= saved_step
    started = [e["data"]["takeover"] for e in history if e["type"] == "job_started"]
    assert started == [False, True]
    assert_whole_history(client, job)


def test_sigterm_checkpoints_and_hands_the_job_back(
    committing_client: TestClient,
    tiny_teacher_dir: Path,
    tmp_path: Path,
    workers: list[subprocess.Popen[bytes]],
) -> None:
    client = committing_client
    workers.append(start_worker(tmp_path / "a.log", name="leaving"))
    job_id = start_long_job(client, tiny_teacher_dir)
    wait(client, job_id, lambda j: j["status"] == "running" and j["progress"]["step"] > 5)
    assert stop_worker(workers[0], sig=signal.SIGTERM) == 0  # a warm, prompt exit
    handed_back = poll(client, job_id)
    assert handed_back is not None and handed_back["status"] == "queued"
    requeued = [e for e in events(client, job_id) if e["type"] == "job_requeued"]
    assert requeued and requeued[-1]["data"]["reason"] == "worker_shutdown"
    step_at_exit = checkpointed(client, job_id)
    assert step_at_exit == handed_back["progress"]["step"]  # checkpointed at the last step

    workers.append(start_worker(tmp_path / "b.log", name="next"))
    job = wait(client, job_id, lambda j: j["status"] in TERMINAL)
    assert job["status"] == "succeeded", job["error"]
    resumed = [e for e in events(client, job_id) if e["type"] == "resumed"]
    assert resumed and resumed[0]["data"]["step"] == step_at_exit
    assert_whole_history(client, job)


@pytest.mark.skipif(shutil.which("pg_ctlcluster") is None, reason="needs pg_ctlcluster")
def test_postgres_restart_during_a_job_loses_nothing(
    committing_client: TestClient,
    tiny_teacher_dir: Path,
    tmp_path: Path,
    workers: list[subprocess.Popen[bytes]],
) -> None:
    client = committing_client
    workers.append(start_worker(tmp_path / "a.log", name="steady"))
    job_id = start_long_job(client, tiny_teacher_dir)
    wait(client, job_id, lambda j: j["status"] == "running" and j["progress"]["step"] > 5)
    version = next(p.name for p in Path("/etc/postgresql").iterdir())
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
    )
    job = wait(client, job_id, lambda j: j["status"] in TERMINAL)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1
    assert_whole_history(client, job)
    assert workers[0].poll() is None  # the worker rode it out


def test_failing_disk_fails_the_job_cleanly(
    committing_client: TestClient,
    tiny_teacher_dir: Path,
    workers: list[subprocess.Popen[bytes]],
) -> None:
    """Every file the worker writes is capped at 16 KiB by the kernel (RLIMIT_FSIZE): the
    first file it writes (the teacher's copy in its scratch folder) cannot be written. The job
    fails with a clear storage error, and no torn checkpoint or artifact is left visible."""
    from app.config import get_settings
    from app.storage import get_storage
    from workers.checkpoints import checkpoint_prefix

    client = committing_client
    workers.append(start_worker(None, name="full-disk", max_file_bytes=16 * 1024))
    job_id = start_long_job(client, tiny_teacher_dir)
    job = wait(client, job_id, lambda j: j["status"] in TERMINAL)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "storage_error"
    assert "size limit" in job["error"]["message"]
    assert client.get(f"/v1/jobs/{job_id}/artifacts").json() == []
    assert client.get(f"/v1/jobs/{job_id}/checkpoints").json() == []
    prefix = checkpoint_prefix(get_settings().default_tenant, job_id)
    assert get_storage().list(prefix) == []
    assert workers[0].poll() is None  # the worker itself carries on


REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_restart_during_a_job_loses_nothing(
    committing_client: TestClient,
    tiny_teacher_dir: Path,
    tmp_path: Path,
    workers: list[subprocess.Popen[bytes]],
) -> None:
    """The broker goes away mid-training (and comes back empty: no persistence here). The
    running job needs no broker, so it finishes; readiness reports the outage meanwhile."""
    import redis

    from app.config import get_settings

    client = committing_client
    workers.append(start_worker(tmp_path / "a.log", name="steady"))
    job_id = start_long_job(client, tiny_teacher_dir)
    wait(client, job_id, lambda j: j["status"] == "running" and j["progress"]["step"] > 5)
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True)
    try:
        assert client.get("/readyz").json()["checks"]["broker"] == "unreachable"
    finally:
        subprocess.run(REDIS_START, check=True, capture_output=True)
    broker = redis.Redis.from_url(get_settings().broker_url)
    deadline = time.monotonic() + 30
    while True:  # the server takes a moment to accept connections again
        try:
            broker.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis did not come back"
            time.sleep(0.2)
    job = wait(client, job_id, lambda j: j["status"] in TERMINAL)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1
    assert_whole_history(client, job)
    assert client.get("/readyz").json()["status"] == "ready"
