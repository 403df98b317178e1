"""Keys and tenants: no key, no entry; another tenant's things are 404, never 403."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.auth.models import Tenant
from app.auth.service import create_key
from app.main import create_app
from tests.factories import TINY_SENTIMENT, zip_folder


@pytest.fixture()
def as_tenant(db_session: Session, client: TestClient) -> Iterator[object]:
    """Build a client for another tenant inside the same rolled-back transaction."""
    clients: list[TestClient] = []

    def make(tenant: str, **limits: int) -> TestClient:
        _, key = create_key(db_session, tenant_id=tenant)
        if limits:
            row = db_session.get(Tenant, tenant)
            for name, value in limits.items():
                setattr(row, name, value)
        db_session.commit()  # a savepoint release: later request rollbacks keep it
        app = client.app
        other = TestClient(app, headers={"Authorization": f"Bearer {key}"})
        clients.append(other)
        return other

    yield make
    for c in clients:
        c.close()


def test_every_v1_route_needs_a_key(client: TestClient) -> None:
    anonymous = TestClient(client.app)
    document = create_app().openapi()
    checked = 0
    for path, methods in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        concrete = (
            path.replace("{job_id}", "job_x")
            .replace("{dataset_id}", "ds_x")
            .replace("{model_id}", "mdl_x")
            .replace("{name}", "student.zip")
        )
        for method in methods:
            response = anonymous.request(method.upper(), concrete)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
            checked += 1
    assert checked >= 14
    assert anonymous.get("/healthz").status_code == 200


def test_bad_and_revoked_keys_are_401(client: TestClient, db_session: Session) -> None:
    app = client.app
    assert (
        TestClient(app, headers={"Authorization": "Bearer dk_wrong"}).get("/v1/jobs").status_code
        == 401
    )
    assert (
        TestClient(app, headers={"Authorization": "Basic abc"}).get("/v1/jobs").status_code == 401
    )
    key_row, key = create_key(db_session, tenant_id="revokee")
    db_session.commit()
    holder = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    assert holder.get("/v1/jobs").status_code == 200
    from app.auth.service import revoke_key

    revoke_key(db_session, key_id=key_row.id)
    db_session.commit()
    assert holder.get("/v1/jobs").status_code == 401


def test_another_tenant_sees_404_and_empty_lists(
    client: TestClient, as_tenant: object, tiny_teacher_dir: Path
) -> None:
    ds = client.post(
        "/v1/datasets", files={"file": ("t.jsonl", (TINY_SENTIMENT / "train.jsonl").read_bytes())}
    ).json()["id"]
    teacher = client.post(
        "/v1/models", files={"file": ("t.zip", zip_folder(tiny_teacher_dir))}
    ).json()["id"]
    job = client.post("/v1/jobs", json={"teacher": teacher, "dataset": ds}).json()["id"]

    other = as_tenant("rival")  # type: ignore[operator]
    for url in (
        f"/v1/datasets/{ds}",
        f"/v1/models/{teacher}",
        f"/v1/jobs/{job}",
        f"/v1/jobs/{job}/events",
        f"/v1/jobs/{job}/metrics",
        f"/v1/jobs/{job}/checkpoints",
        f"/v1/jobs/{job}/artifacts",
        f"/v1/jobs/{job}/artifacts/student.zip",
        f"/v1/jobs/{job}/webhook-deliveries",
    ):
        response = other.get(url)
        assert response.status_code == 404, (url, response.text)
    assert other.post(f"/v1/jobs/{job}/cancel").status_code == 404
    assert other.get("/v1/jobs").json()["data"] == []
    assert other.get("/v1/datasets").json()["data"] == []
    assert all(m["source"] != "upload" for m in other.get("/v1/models").json()["data"])
    # Nor can it build on them.
    response = other.post("/v1/jobs", json={"teacher": teacher, "dataset": ds})
    assert response.status_code == 404
    assert client.get(f"/v1/jobs/{job}").json()["status"] == "queued"  # untouched


def test_tenant_limits_answer_429_and_413(
    client: TestClient, as_tenant: object, tiny_teacher_dir: Path
) -> None:
    content = (TINY_SENTIMENT / "train.jsonl").read_bytes()
    small = as_tenant(
        "small",
        max_active_jobs=1,
        max_upload_bytes=len(content) + 10,  # type: ignore[operator]
        max_stored_bytes=len(content) + 20,
    )
    ds = small.post("/v1/datasets", files={"file": ("t.jsonl", content)})
    assert ds.status_code == 201
    too_big = small.post("/v1/datasets", files={"file": ("big.jsonl", content + content)})
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "file_too_large"
    over_quota = small.post("/v1/datasets", files={"file": ("again.jsonl", content)})
    assert over_quota.status_code == 413
    assert over_quota.json()["error"]["code"] == "storage_quota_exceeded"

    body = {"teacher": "distillery-tests/any-hub-id", "dataset": ds.json()["id"]}
    assert small.post("/v1/jobs", json=body).status_code == 201
    second = small.post("/v1/jobs", json=body)
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "too_many_jobs"
    assert "limit" in second.json()["error"]["message"]
