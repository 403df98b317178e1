"""The job routes through the production unit of work (app.deps.TenantDb, no test override):
a POST's one transaction is committed before it answers, and the reads, each statement in its
own transaction, see it and answer the same JSON."""

from __future__ import annotations

import redis
from fastapi.testclient import TestClient

from tests.factories import HUB_TEACHER, TINY_SENTIMENT, TINY_STUDENT


def test_a_created_job_reads_back_the_same_through_get_and_list(
    committing_client: TestClient, queue: redis.Redis
) -> None:
    client = committing_client
    content = (TINY_SENTIMENT / "train.jsonl").read_bytes()
    dataset = client.post("/v1/datasets", files={"file": ("t.jsonl", content)}).json()["id"]
    body = {"teacher": HUB_TEACHER, "dataset": dataset, "student": TINY_STUDENT}
    created = client.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    assert created.headers["content-type"] == "application/json"
    job = created.json()
    try:
        read = client.get(f"/v1/jobs/{job['id']}")
        assert read.status_code == 200
        assert read.headers["content-type"] == "application/json"
        assert read.json() == {**job, "webhook_secret": None}
        listed = client.get("/v1/jobs", params={"status": "queued", "limit": 100}).json()
        assert {**job, "webhook_secret": None} in listed["data"]
        assert client.get("/v1/jobs/job_missing").json()["error"]["code"] == "job_not_found"
        stranger = TestClient(client.app, headers={"Authorization": "Bearer dk_not_a_key"})
        assert stranger.get(f"/v1/jobs/{job['id']}").status_code == 401
    finally:
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
