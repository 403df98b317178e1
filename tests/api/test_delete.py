"""DELETE /v1/datasets/{id}, /v1/models/{id}, /v1/jobs/{id}: rows and stored objects go, what a
queued or running job reads stays (409 naming the job), another tenant's ids are 404, and a
second delete is 404."""

from __future__ import annotations

import io
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.artifacts import repository as artifacts_repository
from app.artifacts.models import Artifact
from app.auth.service import create_key
from app.config import get_settings
from app.jobs.models import Job, JobCheckpoint, JobEvent
from app.keys import checkpoint_prefix, job_prefix
from app.storage import get_storage
from tests.factories import TINY_SENTIMENT, zip_folder

HUB_TEACHER = "distillery-tests/any-hub-id"


def tenant_of(client: TestClient) -> str:
    return str(client.tenant)  # type: ignore[attr-defined]


@pytest.fixture()
def dataset_id(client: TestClient) -> str:
    content = (TINY_SENTIMENT / "train.jsonl").read_bytes()
    response = client.post("/v1/datasets", files={"file": ("t.jsonl", content)})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture()
def model_id(client: TestClient, tiny_teacher_dir: Path) -> str:
    response = client.post("/v1/models", files={"file": ("t.zip", zip_folder(tiny_teacher_dir))})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture()
def other_tenant(db_session: Session, client: TestClient) -> Iterator[TestClient]:
    _, key = create_key(db_session, tenant_id=f"t-{uuid.uuid4().hex[:12]}")
    db_session.commit()  # a savepoint release: the test's transaction still rolls back
    with TestClient(client.app, headers={"Authorization": f"Bearer {key}"}) as other:
        yield other


def create_job(client: TestClient, **body: Any) -> str:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def finish(db_session: Session, job_id: str, status: str = "succeeded") -> None:
    """Where a worker would leave a job; only the lifecycle moves it, so the test sets it."""
    db_session.get_one(Job, job_id).status = status
    db_session.commit()


def store(key: str, content: bytes = b"x" * 1000) -> None:
    get_storage().put(key, io.BytesIO(content))


def stored_under(prefix: str) -> list[str]:
    return [o.key for o in get_storage().list(prefix)]


def error_of(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


# --- datasets


def test_delete_dataset_removes_row_and_file_and_a_second_delete_is_404(
    client: TestClient, dataset_id: str
) -> None:
    prefix = f"tenants/{tenant_of(client)}/datasets/{dataset_id}"
    assert stored_under(prefix)
    response = client.delete(f"/v1/datasets/{dataset_id}")
    assert response.status_code == 204
    assert response.content == b""
    assert stored_under(prefix) == []
    assert client.get(f"/v1/datasets/{dataset_id}").status_code == 404
    again = client.delete(f"/v1/datasets/{dataset_id}")
    assert (again.status_code, error_of(again)["code"]) == (404, "dataset_not_found")


def test_dataset_of_a_queued_job_is_409_naming_the_job_until_the_job_ends(
    client: TestClient, dataset_id: str
) -> None:
    job = create_job(client, teacher=HUB_TEACHER, dataset=dataset_id)
    refused = client.delete(f"/v1/datasets/{dataset_id}")
    assert refused.status_code == 409
    assert error_of(refused)["code"] == "dataset_in_use"
    assert job in error_of(refused)["message"]
    assert client.get(f"/v1/datasets/{dataset_id}").status_code == 200

    assert client.post(f"/v1/jobs/{job}/cancel").status_code == 200
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job}").json()["dataset"] == dataset_id  # history stays


def test_validation_dataset_of_a_queued_job_is_409(client: TestClient, dataset_id: str) -> None:
    content = (TINY_SENTIMENT / "dev.jsonl").read_bytes()
    dev = client.post("/v1/datasets", files={"file": ("d.jsonl", content)}).json()["id"]
    job = create_job(client, teacher=HUB_TEACHER, dataset=dataset_id, validation_dataset=dev)
    refused = client.delete(f"/v1/datasets/{dev}")
    assert (refused.status_code, error_of(refused)["code"]) == (409, "dataset_in_use")
    assert job in error_of(refused)["message"]


# --- models


def test_delete_model_removes_its_unpacked_files(client: TestClient, model_id: str) -> None:
    prefix = f"tenants/{tenant_of(client)}/models/{model_id}"
    assert stored_under(prefix)
    assert client.delete(f"/v1/models/{model_id}").status_code == 204
    assert stored_under(prefix) == []
    assert client.get(f"/v1/models/{model_id}").status_code == 404
    assert error_of(client.delete(f"/v1/models/{model_id}"))["code"] == "model_not_found"


def test_model_of_a_queued_job_is_409_as_teacher_and_as_student_start(
    client: TestClient, dataset_id: str, model_id: str, tiny_teacher_dir: Path
) -> None:
    as_teacher = create_job(client, teacher=model_id, dataset=dataset_id)
    refused = client.delete(f"/v1/models/{model_id}")
    assert (refused.status_code, error_of(refused)["code"]) == (409, "model_in_use")
    assert as_teacher in error_of(refused)["message"]

    zipped = zip_folder(tiny_teacher_dir)
    start = client.post("/v1/models", files={"file": ("s.zip", zipped)}).json()["id"]
    as_start = create_job(
        client,
        teacher=HUB_TEACHER,
        dataset=dataset_id,
        student={"init": "model", "init_model": start},
    )
    refused = client.delete(f"/v1/models/{start}")
    assert (refused.status_code, error_of(refused)["code"]) == (409, "model_in_use")
    assert as_start in error_of(refused)["message"]


def test_unknown_and_catalog_models_cannot_be_deleted(client: TestClient) -> None:
    assert error_of(client.delete("/v1/models/mdl_missing"))["code"] == "model_not_found"
    assert error_of(client.delete("/v1/models/no-such-catalog-name"))["code"] == "model_not_found"


def test_catalog_model_is_409_not_deletable(client: TestClient, tiny_teacher_dir: Path) -> None:
    folder = get_settings().model_dir / f"shared-{uuid.uuid4().hex[:8]}"
    shutil.copytree(tiny_teacher_dir, folder)
    try:
        response = client.delete(f"/v1/models/{folder.name}")
        assert (response.status_code, error_of(response)["code"]) == (409, "model_not_deletable")
        assert (folder / "config.json").is_file()
    finally:
        shutil.rmtree(folder)


# --- jobs


def test_queued_job_is_409_job_active_and_cancel_then_delete_removes_everything(
    client: TestClient, db_session: Session, dataset_id: str
) -> None:
    tenant = tenant_of(client)
    job = create_job(client, teacher=HUB_TEACHER, dataset=dataset_id)
    refused = client.delete(f"/v1/jobs/{job}")
    assert (refused.status_code, error_of(refused)["code"]) == (409, "job_active")
    assert f"POST /v1/jobs/{job}/cancel" in error_of(refused)["message"]

    assert client.post(f"/v1/jobs/{job}/cancel").status_code == 200
    # What a worker leaves behind: a checkpoint, the fine-tuned teacher, an artifact.
    store(f"{checkpoint_prefix(tenant, job)}/last.pt")
    store(f"{checkpoint_prefix(tenant, job)}/teacher-finetuned/model.safetensors")
    key = f"{job_prefix(tenant, job)}/artifacts/student.zip"
    store(key)
    artifacts_repository.replace(
        db_session,
        Artifact(
            job_id=job,
            tenant_id=tenant,
            name="student.zip",
            content_type="application/zip",
            size_bytes=1000,
            sha256="0" * 64,
            storage_key=key,
        ),
    )
    db_session.commit()

    assert client.delete(f"/v1/jobs/{job}").status_code == 204
    assert stored_under(job_prefix(tenant, job)) == []
    for url in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/events", f"/v1/jobs/{job}/artifacts"):
        assert client.get(url).status_code == 404, url
    db_session.expire_all()
    assert db_session.get(Job, job) is None
    assert db_session.query(JobEvent).filter_by(job_id=job).count() == 0
    assert db_session.query(Artifact).filter_by(job_id=job).count() == 0
    again = client.delete(f"/v1/jobs/{job}")
    assert (again.status_code, error_of(again)["code"]) == (404, "job_not_found")
    assert client.get(f"/v1/datasets/{dataset_id}").status_code == 200  # not the job's to take


def test_running_job_is_409_job_active(
    client: TestClient, db_session: Session, dataset_id: str
) -> None:
    job = create_job(client, teacher=HUB_TEACHER, dataset=dataset_id)
    finish(db_session, job, "running")
    refused = client.delete(f"/v1/jobs/{job}")
    assert (refused.status_code, error_of(refused)["code"]) == (409, "job_active")


def test_a_job_whose_checkpoint_a_queued_job_starts_from_is_409_until_that_job_ends(
    client: TestClient, db_session: Session, dataset_id: str
) -> None:
    tenant = tenant_of(client)
    source = create_job(client, teacher=HUB_TEACHER, dataset=dataset_id)
    finish(db_session, source)
    key = f"{checkpoint_prefix(tenant, source)}/last.pt"
    store(key)
    db_session.add(
        JobCheckpoint(
            job_id=source,
            tenant_id=tenant,
            step=10,
            stage="distill",
            size_bytes=1000,
            path=key,
            losses={},
        )
    )
    db_session.commit()
    follower = create_job(
        client, teacher=HUB_TEACHER, dataset=dataset_id, init_from={"job": source}
    )
    refused = client.delete(f"/v1/jobs/{source}")
    assert (refused.status_code, error_of(refused)["code"]) == (409, "job_in_use")
    assert follower in error_of(refused)["message"]
    assert stored_under(checkpoint_prefix(tenant, source)) == [key]

    assert client.post(f"/v1/jobs/{follower}/cancel").status_code == 200
    assert client.delete(f"/v1/jobs/{source}").status_code == 204
    assert stored_under(job_prefix(tenant, source)) == []
    assert client.get(f"/v1/jobs/{follower}").json()["init_from"]["job"] == source


# --- tenants


def test_another_tenant_s_ids_are_404_and_left_alone(
    client: TestClient,
    other_tenant: TestClient,
    db_session: Session,
    dataset_id: str,
    model_id: str,
) -> None:
    job = create_job(client, teacher=HUB_TEACHER, dataset=dataset_id)
    client.post(f"/v1/jobs/{job}/cancel")
    for url, code in (
        (f"/v1/datasets/{dataset_id}", "dataset_not_found"),
        (f"/v1/models/{model_id}", "model_not_found"),
        (f"/v1/jobs/{job}", "job_not_found"),
    ):
        response = other_tenant.delete(url)
        assert (response.status_code, error_of(response)["code"]) == (404, code), url
        assert client.get(url).status_code == 200, url


def test_delete_needs_a_key(client: TestClient) -> None:
    anonymous = TestClient(client.app)
    for url in ("/v1/datasets/ds_x", "/v1/models/mdl_x", "/v1/jobs/job_x"):
        assert anonymous.delete(url).status_code == 401


@pytest.mark.parametrize(
    "url",
    [
        "/v1/datasets/..%2F..%2Fetc%2Fpasswd",
        "/v1/datasets/ds_" + "9" * 5000,
        "/v1/datasets/%C2%B2",
        "/v1/models/..%2F..%2Fetc",
        "/v1/models/tenants/t/models/mdl_x",
        "/v1/models/mdl_%2e%2e%2f%2e%2e",
        "/v1/models/%00",
        "/v1/jobs/job_" + "x" * 5000,
        "/v1/jobs/%20",
    ],
)
def test_hostile_ids_are_a_404_in_the_envelope_and_delete_nothing(
    client: TestClient, dataset_id: str, url: str
) -> None:
    response = client.delete(url)
    assert response.status_code == 404, response.text
    assert error_of(response)["code"].endswith("not_found")  # a route or an id
    assert client.get(f"/v1/datasets/{dataset_id}").status_code == 200
