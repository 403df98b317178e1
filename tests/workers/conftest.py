"""Fixtures of the runner's in-process tests: committed rows a worker can see."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from tests.factories import TINY_SENTIMENT, zip_folder


@pytest.fixture()
def queued_job(committing_client: TestClient, tiny_teacher_dir: Path, queue: redis.Redis) -> str:
    client = committing_client
    ds = client.post(
        "/v1/datasets", files={"file": ("t.jsonl", (TINY_SENTIMENT / "train.jsonl").read_bytes())}
    ).json()["id"]
    teacher = client.post(
        "/v1/models", files={"file": ("t.zip", zip_folder(tiny_teacher_dir))}
    ).json()["id"]
    job = client.post("/v1/jobs", json={"teacher": teacher, "dataset": ds}).json()
    assert job["status"] == "queued"
    return str(job["id"])
