"""The whole path with a real Celery worker process, real Postgres, Redis and transformers."""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.queue import enqueue_job
from tests.factories import TINY_STUDENT
from tests.jobs_support import event_types, upload_inputs, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_job_trains_a_student_that_transformers_loads(
    committing_client: TestClient,
    tiny_teacher_dir: Path,
    worker: subprocess.Popen[bytes],
    worker_log: Path,
    tmp_path: Path,
) -> None:
    client = committing_client
    train, dev, teacher = upload_inputs(client, tiny_teacher_dir)
    created = client.post(
        "/v1/jobs",
        json={
            "teacher": teacher,
            "dataset": train,
            "validation_dataset": dev,
            "student": TINY_STUDENT,
            "hyperparameters": {"epochs": 1, "batch_size": 16, "max_seq_length": 32},
            "seed": 3,
        },
    )
    assert created.status_code == 201, created.text

    job = wait_for(client, created.json()["id"], worker)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["step"] == job["progress"]["total_steps"] > 0
    assert job["progress"]["fraction"] == 1.0
    assert job["started_at"] and job["finished_at"] and job["attempts"] == 1
    metrics = job["metrics"]
    for who in ("teacher", "student"):
        assert 0.0 <= metrics[who]["accuracy"] <= 1.0
        assert 0.0 <= metrics[who]["macro_f1"] <= 1.0
    assert metrics["retention"] == pytest.approx(
        metrics["student"]["accuracy"] / metrics["teacher"]["accuracy"], rel=1e-3
    )
    assert metrics["parameters"]["student"] < metrics["parameters"]["teacher"]
    types = event_types(job["id"])
    assert types[:2] == ["job_created", "job_started"]
    assert types[-1] == "job_succeeded"
    assert "stage_started" in types

    artifacts = {a["name"]: a for a in client.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    assert {"student.zip", "metrics.json"} <= set(artifacts)
    download = client.get(f"/v1/jobs/{job['id']}/artifacts/student.zip")
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == artifacts["student.zip"]["sha256"]
    assert int(download.headers["content-length"]) == artifacts["student.zip"]["size_bytes"]

    folder = tmp_path / "student"
    zipfile.ZipFile(io.BytesIO(download.content)).extractall(folder)
    assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert set(model.config.id2label.values()) == {"neg", "pos"}
    prediction = pipeline("text-classification", model=model, tokenizer=tokenizer)(
        "a warm, funny and beautifully acted film"
    )
    assert prediction[0]["label"] in {"neg", "pos"}

    # A second delivery of the same message must not train it again. The queue is FIFO and
    # the worker takes one message at a time, so once a job enqueued after the duplicate has
    # ended, the duplicate has been delivered and refused.
    enqueue_job(job["id"])
    follower = client.post(
        "/v1/jobs",
        json={
            "teacher": "distillery-tests/no-such-model",
            "dataset": train,
            "student": TINY_STUDENT,
        },
    )
    assert follower.json()["teacher_source"] == "hub"
    failed = wait_for(client, follower.json()["id"], worker)
    # Offline, the real from_pretrained cannot reach the hub: a clear error, not a crash.
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "teacher_not_found"
    assert "no-such-model" in failed["error"]["message"]

    again = client.get(f"/v1/jobs/{job['id']}").json()
    assert (again["status"], again["attempts"]) == ("succeeded", 1)
    assert event_types(job["id"]).count("job_started") == 1
    assert f"job {job['id']} is succeeded, not queued" in worker_log.read_text()
