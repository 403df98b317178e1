"""The retention sweep: a finished job past its tenant's retention loses its artifacts and
checkpoints, its row stays marked; what an active job starts from waits; the scratch folder
loses what no job needs."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from fastapi.testclient import TestClient

from app.auth.models import Tenant
from app.auth.service import create_key
from app.base import utcnow
from app.config import Settings, get_settings
from app.db import session_factory
from app.jobs.models import Job
from app.keys import artifact_key, checkpoint_prefix, job_prefix
from app.main import create_app
from app.storage import get_storage
from tests.factories import TINY_SENTIMENT
from workers import scratch
from workers.retention import prune_scratch, sweep

HUB_TEACHER = "distillery-tests/any-hub-id"


class Tenantry:
    """A committed tenant of its own, its API and a dataset."""

    def __init__(self, api: TestClient, tenant: str, dataset: str) -> None:
        self.api, self.tenant, self.dataset = api, tenant, dataset

    def job(self, *, ended_days_ago: float | None, **body: object) -> str:
        response = self.api.post(
            "/v1/jobs", json={"teacher": HUB_TEACHER, "dataset": self.dataset, **body}
        )
        assert response.status_code == 201, response.text
        job_id = str(response.json()["id"])
        get_storage().put(artifact_key(self.tenant, job_id, "student.zip"), io.BytesIO(b"z" * 10))
        get_storage().put(f"{checkpoint_prefix(self.tenant, job_id)}/last.pt", io.BytesIO(b"c"))
        if ended_days_ago is not None:
            with session_factory().begin() as s:
                job = s.get_one(Job, job_id)
                job.status = "succeeded"
                job.finished_at = utcnow() - timedelta(days=ended_days_ago)
                job.stored_bytes = 1
        return job_id

    def retention(self, days: int | None) -> None:
        with session_factory().begin() as s:
            s.get_one(Tenant, self.tenant).retention_days = days


@pytest.fixture()
def tenantry(api_key: str, queue: redis.Redis) -> Iterator[Tenantry]:
    tenant = f"keep-{uuid.uuid4().hex[:10]}"
    with session_factory().begin() as s:
        _, key = create_key(s, tenant_id=tenant)
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as api:
        content = (TINY_SENTIMENT / "train.jsonl").read_bytes()
        dataset = api.post("/v1/datasets", files={"file": ("t.jsonl", content)}).json()["id"]
        made = Tenantry(api, tenant, dataset)
        yield made
        for job in api.get("/v1/jobs", params={"status": "queued"}).json()["data"]:
            api.post(f"/v1/jobs/{job['id']}/cancel")  # nothing left queued for other tests


def expired_at(job_id: str) -> object:
    with session_factory()() as s:
        return s.get_one(Job, job_id).artifacts_expired_at


def test_a_tenant_s_retention_expires_its_old_jobs_only(tenantry: Tenantry) -> None:
    tenantry.retention(2)
    old = tenantry.job(ended_days_ago=3)
    recent = tenantry.job(ended_days_ago=1)
    running = tenantry.job(ended_days_ago=None)

    assert old in sweep(get_settings())
    assert get_storage().list(job_prefix(tenantry.tenant, old)) == []
    assert expired_at(old) is not None
    for kept in (recent, running):
        assert expired_at(kept) is None
        assert get_storage().list(job_prefix(tenantry.tenant, kept)) != []

    public = tenantry.api.get(f"/v1/jobs/{old}").json()
    assert public["status"] == "succeeded"  # the row stays
    assert public["artifacts_expired_at"] is not None
    download = tenantry.api.get(f"/v1/jobs/{old}/artifacts/student.zip")
    assert (download.status_code, download.json()["error"]["code"]) == (410, "artifact_expired")
    with session_factory()() as s:
        assert s.get_one(Job, old).stored_bytes == 0
    assert old not in sweep(get_settings())  # once


def test_the_service_default_applies_to_tenants_without_their_own(tenantry: Tenantry) -> None:
    old = tenantry.job(ended_days_ago=3)
    assert old not in sweep(Settings(retention_days=None))  # off by default
    assert old in sweep(Settings(retention_days=2))


def test_a_tenant_s_own_retention_overrides_the_default(tenantry: Tenantry) -> None:
    tenantry.retention(10)
    old = tenantry.job(ended_days_ago=3)
    assert old not in sweep(Settings(retention_days=2))
    assert expired_at(old) is None


def test_a_checkpoint_an_active_job_starts_from_waits(tenantry: Tenantry) -> None:
    from app.jobs.models import JobCheckpoint

    tenantry.retention(2)
    source = tenantry.job(ended_days_ago=3)
    with session_factory().begin() as s:
        s.add(
            JobCheckpoint(
                job_id=source,
                tenant_id=tenantry.tenant,
                step=3,
                stage="distill",
                size_bytes=1,
                path=f"{checkpoint_prefix(tenantry.tenant, source)}/last.pt",
                losses={},
            )
        )
    follower = tenantry.job(ended_days_ago=None, init_from={"job": source})
    assert source not in sweep(get_settings())
    assert get_storage().list(checkpoint_prefix(tenantry.tenant, source)) != []
    tenantry.api.post(f"/v1/jobs/{follower}/cancel")
    assert source in sweep(get_settings())
    again = tenantry.api.post(
        "/v1/jobs",
        json={"teacher": HUB_TEACHER, "dataset": tenantry.dataset, "init_from": {"job": source}},
    )
    assert again.status_code == 422
    assert "expired" in again.json()["error"]["message"]


def test_expires_at_is_finished_at_plus_the_tenant_s_retention(tenantry: Tenantry) -> None:
    job = tenantry.job(ended_days_ago=1)
    assert tenantry.api.get(f"/v1/jobs/{job}").json()["expires_at"] is None  # no retention
    tenantry.retention(30)
    public = tenantry.api.get(f"/v1/jobs/{job}").json()
    finished = public["finished_at"]
    assert public["expires_at"] is not None and public["expires_at"] > finished
    with session_factory()() as s:
        row = s.get_one(Job, job)
        assert row.finished_at is not None
        expected = row.finished_at + timedelta(days=30)
    listed = tenantry.api.get("/v1/jobs").json()["data"]
    assert [j["expires_at"] for j in listed if j["id"] == job] == [public["expires_at"]]
    assert public["expires_at"].startswith(expected.date().isoformat())
    queued = tenantry.job(ended_days_ago=None)
    assert tenantry.api.get(f"/v1/jobs/{queued}").json()["expires_at"] is None


def test_prune_scratch_removes_what_no_job_needs(tenantry: Tenantry) -> None:
    settings = get_settings()
    root = scratch.root(settings)
    ended = tenantry.job(ended_days_ago=0)
    queued = tenantry.job(ended_days_ago=None)
    gone = f"job_{uuid.uuid4().hex[:20]}"
    needed = [scratch.job_folder(settings, queued), root / "runs" / f"{queued}-abc123"]
    stale = [
        scratch.job_folder(settings, ended),
        root / "runs" / f"{ended}-x1y2z3",
        scratch.job_folder(settings, gone),
        root / "cache" / "tenants" / tenantry.tenant / "models" / "mdl_deleted",
    ]
    for folder in needed + stale:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "f").write_bytes(b"x")
    removed = prune_scratch(session_factory(), settings)
    assert set(stale) <= set(removed)
    assert all(not f.exists() for f in stale)
    assert all(f.exists() for f in needed)


def test_the_sweep_trims_a_job_that_ended_without_its_worker(tenantry: Tenantry) -> None:
    """The reaper fails a job whose worker vanished: nobody trimmed its work folder then."""
    from app.jobs.models import JobCheckpoint

    job = tenantry.job(ended_days_ago=0)
    prefix = checkpoint_prefix(tenantry.tenant, job)
    get_storage().put(f"{prefix}/last.pt", io.BytesIO(b"c" * 300))
    get_storage().put(f"{prefix}/teacher-finetuned/model.safetensors", io.BytesIO(b"t" * 500))
    with session_factory().begin() as s:
        s.add(
            JobCheckpoint(
                job_id=job,
                tenant_id=tenantry.tenant,
                step=3,
                stage="distill",
                size_bytes=300,
                path=f"{prefix}/last.pt",
                losses={},
            )
        )
        row = s.get_one(Job, job)
        row.status, row.stored_bytes = "failed", 800
    assert job not in sweep(get_settings())  # not expired: trimmed
    assert [o.key for o in get_storage().list(prefix)] == [f"{prefix}/last.pt"]
    with session_factory()() as s:
        assert s.get_one(Job, job).stored_bytes == 300
