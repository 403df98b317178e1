"""The client against the real app: in process (TestClient), or through a real HTTP server on
127.0.0.1 that forwards to it and fails chosen requests (tests/client/proxy.py)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.artifacts import repository as artifacts_repository
from app.base import utcnow
from app.db import session_factory
from app.jobs import repository as jobs_repository
from app.storage import get_storage
from app.tables import Artifact, Job
from client import DistilleryClient
from tests.client.proxy import FaultyProxy, serve
from tests.factories import HUB_TEACHER, unique_dataset

FinishJob = Callable[..., None]


@pytest.fixture()
def api(committing_client: TestClient, queue: redis.Redis) -> DistilleryClient:
    """The client over the real app in process (the TestClient sends the tests' API key); the
    run's Redis queue is emptied around it."""
    return DistilleryClient(http=committing_client, backoff=0.01)


@pytest.fixture()
def proxy(committing_client: TestClient, queue: redis.Redis) -> Iterator[FaultyProxy]:
    with serve(committing_client) as state:
        yield state


@pytest.fixture()
def over_network(proxy: FaultyProxy, api_key: str) -> Iterator[DistilleryClient]:
    """The client with its own httpx.Client and real sockets, through the proxy."""
    with DistilleryClient(proxy.url, api_key=api_key, backoff=0.01, timeout=10) as client:
        yield client


@pytest.fixture()
def dataset_id(api: DistilleryClient, tmp_path: Path) -> str:
    return api.upload_dataset(unique_dataset(tmp_path)).id


@pytest.fixture()
def job_id(api: DistilleryClient, dataset_id: str) -> str:
    return api.create_job(teacher=HUB_TEACHER, dataset=dataset_id).id


@pytest.fixture()
def finish_job() -> FinishJob:
    """finish_job(job_id, status="succeeded", artifacts={name: bytes}): end a job as the worker
    would, with artifacts in real storage and rows and the final event in the database."""
    return _finish_job


def _finish_job(
    job_id: str, *, status: str = "succeeded", artifacts: dict[str, bytes] | None = None
) -> None:
    with session_factory().begin() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=status,
                stage="done",
                finished_at=utcnow(),
                metrics={"student": {"accuracy": 0.875}} if status == "succeeded" else None,
            )
        )
        for name, content in (artifacts or {}).items():
            key = f"tenants/{job.tenant_id}/jobs/{job_id}/artifacts/{name}"
            stored = get_storage().put(key, io.BytesIO(content))
            artifacts_repository.replace(
                s,
                Artifact(
                    job_id=job_id,
                    tenant_id=job.tenant_id,
                    name=name,
                    content_type="application/octet-stream",
                    size_bytes=stored.size_bytes,
                    sha256=stored.sha256,
                    storage_key=key,
                ),
            )
        jobs_repository.add_event(
            s,
            job_id=job_id,
            tenant_id=job.tenant_id,
            type=f"job_{status}",
            message=f"job {status}",
            data={},
        )
