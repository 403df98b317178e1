from __future__ import annotations

import uuid
from pathlib import Path

import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.datasets.models import Dataset
from app.jobs.models import Job
from tests.factories import TINY_SENTIMENT, queued_job_ids, zip_folder


def test_retried_job_post_creates_exactly_one_job(
    client: TestClient, db_session: Session, tiny_teacher_dir: Path, queue: redis.Redis
) -> None:
    ds = client.post(
        "/v1/datasets", files={"file": ("t.jsonl", (TINY_SENTIMENT / "train.jsonl").read_bytes())}
    ).json()["id"]
    teacher = client.post(
        "/v1/models", files={"file": ("t.zip", zip_folder(tiny_teacher_dir))}
    ).json()["id"]
    body = {"teacher": teacher, "dataset": ds, "hyperparameters": {"epochs": 1}}
    headers = {"Idempotency-Key": "create-job-1"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    second = client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert (
        db_session.scalar(
            select(func.count()).select_from(Job).where(Job.tenant_id == client.tenant)
        )
        == 1
    )  # type: ignore[attr-defined]
    assert queued_job_ids(queue) == [first.json()["id"]]

    changed = client.post("/v1/jobs", json={**body, "seed": 9}, headers=headers)
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_key_reused"
    assert (
        db_session.scalar(
            select(func.count()).select_from(Job).where(Job.tenant_id == client.tenant)
        )
        == 1
    )  # type: ignore[attr-defined]


def test_failed_request_does_not_burn_the_key(committing_client: TestClient) -> None:
    """Through the production session boundary: a failed request rolls its key back."""
    client = committing_client
    headers = {"Idempotency-Key": f"k-404-{uuid.uuid4()}"}
    bad = client.post("/v1/jobs", json={"teacher": "x", "dataset": "ds_missing"}, headers=headers)
    assert bad.status_code == 404
    again = client.post("/v1/jobs", json={"teacher": "x", "dataset": "ds_missing"}, headers=headers)
    assert again.status_code == 404  # re-executed, not replayed as a success


def test_retried_upload_stores_one_dataset(client: TestClient, db_session: Session) -> None:
    content = (TINY_SENTIMENT / "dev.jsonl").read_bytes()
    headers = {"Idempotency-Key": "upload-1"}
    a = client.post("/v1/datasets", files={"file": ("d.jsonl", content)}, headers=headers)
    b = client.post("/v1/datasets", files={"file": ("d.jsonl", content)}, headers=headers)
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] == b.json()["id"]
    assert (
        db_session.scalar(
            select(func.count()).select_from(Dataset).where(Dataset.tenant_id == client.tenant)
        )
        == 1
    )  # type: ignore[attr-defined]
    other = client.post(
        "/v1/datasets", files={"file": ("d.jsonl", content + b"\n")}, headers=headers
    )
    assert other.status_code == 409
