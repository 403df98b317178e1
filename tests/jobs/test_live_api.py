"""What a client lives on, against a real worker: SSE, metrics, checkpoints, webhooks,
ranged downloads and cancelling a running job."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from tests.factories import TINY_STUDENT
from tests.jobs_support import DEADLINE_S, upload_inputs, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class Receiver:
    """A real HTTP server that records webhook requests; the first `fail_first` get a 500."""

    def __init__(self, fail_first: int) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = len(receiver.requests) <= receiver.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=1)
    yield r
    r.server.shutdown()


def read_sse(client: TestClient, job_id: str, last_event_id: str | None = None) -> list[dict]:
    """Read the stream to its end (the server closes it when the job has ended)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events, current = [], {}
    with client.stream(
        "GET", f"/v1/jobs/{job_id}/events", params={"stream": "true"}, headers=headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                current = {}
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            current[key] = value.strip()
    return events


def wait_until(predicate: Any, worker: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        assert worker.poll() is None, "the worker process died"
        time.sleep(0.2)
    raise AssertionError("condition never held")


def test_live_events_metrics_checkpoints_webhook_and_ranged_download(
    committing_client: TestClient,
    tiny_teacher_dir: Path,
    worker: subprocess.Popen[bytes],
    receiver: Receiver,
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
            "webhook_url": receiver.url,
        },
    ).json()
    job_id, secret = created["id"], created["webhook_secret"]
    assert secret.startswith("whsec_")
    assert client.get(f"/v1/jobs/{job_id}").json()["webhook_secret"] is None  # shown once

    # The live stream, opened while the job is queued, runs to the job's end.
    events = read_sse(client, job_id)
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[0]["event"] == "job_created"
    assert events[-1]["event"] == "job_succeeded"
    kinds = {e["event"] for e in events}
    assert {"job_started", "stage_started", "stage_finished", "checkpoint_saved"} <= kinds
    assert json.loads(events[-1]["data"])["type"] == "job_succeeded"

    # Resuming from Last-Event-ID gives exactly the events after it.
    middle = events[len(events) // 2]["id"]
    resumed = read_sse(client, job_id, last_event_id=middle)
    assert [e["id"] for e in resumed] == [e["id"] for e in events if int(e["id"]) > int(middle)]
    page = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 3}).json()
    assert [e["id"] for e in page["data"]] == ids[:3] and page["has_more"] is True

    job = client.get(f"/v1/jobs/{job_id}").json()
    series = client.get(f"/v1/jobs/{job_id}/metrics").json()
    steps = [s["step"] for s in series["steps"]]
    assert steps == list(range(1, job["progress"]["total_steps"] + 1))  # every step, in order
    assert all("total" in s["losses"] and s["learning_rate"] >= 0 for s in series["steps"])
    assert {s["stage"] for s in series["steps"]} >= {"intermediate_distill", "prediction_distill"}
    assert series["final"] == job["metrics"]

    checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints").json()
    assert checkpoints and checkpoints[-1]["available"] is True
    assert checkpoints[-1]["size_bytes"] > 0
    assert [c["available"] for c in checkpoints[:-1]] == [False] * (len(checkpoints) - 1)

    # A ranged download resumes to the exact bytes of the listing's sha256.
    listing = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()}
    url = f"/v1/jobs/{job_id}/artifacts/student.zip"
    head = client.get(url, headers={"Range": "bytes=0-99"})
    assert head.status_code == 206 and len(head.content) == 100
    assert head.headers["content-range"].startswith("bytes 0-99/")
    tail = client.get(url, headers={"Range": "bytes=100-"})
    assert tail.status_code == 206
    assert (
        hashlib.sha256(head.content + tail.content).hexdigest() == listing["student.zip"]["sha256"]
    )
    assert head.headers["etag"].strip('"') == listing["student.zip"]["sha256"]

    # The webhook: first attempt gets a 500, the retry lands; both recorded; signature valid.
    deliveries = wait_until(
        lambda: [
            d
            for d in client.get(f"/v1/jobs/{job_id}/webhook-deliveries").json()["data"]
            if d["succeeded"]
        ],
        worker,
    )
    history = client.get(f"/v1/jobs/{job_id}/webhook-deliveries").json()["data"]
    assert [(d["attempt"], d["status_code"], d["state"]) for d in history] == [
        (1, 500, "failed"),
        (2, 204, "succeeded"),
    ]
    assert deliveries[0]["event_type"] == "job.succeeded"
    headers, body = receiver.requests[-1]
    payload = Webhook(secret).verify(body, headers)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job_id and payload["data"]["status"] == "succeeded"
    assert headers["webhook-id"] == receiver.requests[0][0]["webhook-id"]  # same id on retry
    with pytest.raises(Exception):  # noqa: B017 - any verification failure
        Webhook("whsec_" + "A" * 44).verify(body, headers)


def test_cancel_running_job_stops_and_keeps_its_last_checkpoint(
    committing_client: TestClient,
    tiny_teacher_dir: Path,
    worker: subprocess.Popen[bytes],
) -> None:
    client = committing_client
    train, dev, teacher = upload_inputs(client, tiny_teacher_dir)
    receiver = Receiver(fail_first=0)
    try:
        job = client.post(
            "/v1/jobs",
            json={
                "teacher": teacher,
                "dataset": train,
                "validation_dataset": dev,
                "student": TINY_STUDENT,
                "webhook_url": receiver.url,
                "hyperparameters": {"epochs": 300, "batch_size": 16, "max_seq_length": 32},
                "distillation": {"teacher_finetune": {"epochs": 1}},
            },
        ).json()
        # Cancelled once the student exists, so its checkpoint can seed another job below.
        wait_until(
            lambda: (
                (j := client.get(f"/v1/jobs/{job['id']}").json())["status"] == "running"
                and j["stage"] == "intermediate_distill"
            ),
            worker,
        )
        cancel = client.post(f"/v1/jobs/{job['id']}/cancel")
        assert cancel.status_code == 200
        assert cancel.json()["cancel_requested"] is True
        ended = wait_for(client, job["id"], worker)
        assert ended["status"] == "cancelled"
        assert ended["progress"]["step"] < ended["progress"]["total_steps"]
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200  # idempotent

        types = [
            e["type"]
            for e in client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()[
                "data"
            ]
        ]
        after_request = types[types.index("cancel_requested") :]
        assert after_request[-2:] == ["checkpoint_saved", "job_cancelled"]
        last = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()[-1]
        assert last["available"] is True and last["step"] == ended["progress"]["step"]
        wait_until(lambda: receiver.requests, worker)
        assert json.loads(receiver.requests[0][1])["type"] == "job.cancelled"

        # A new job starts its student from that checkpoint.
        shaped_otherwise = {**TINY_STUDENT, "hidden_size": 8}
        refused = client.post(
            "/v1/jobs",
            json={
                "teacher": teacher,
                "dataset": train,
                "student": shaped_otherwise,
                "init_from": {"job": job["id"]},
            },
        )
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "init_from.job"
        follow_up = client.post(
            "/v1/jobs",
            json={
                "teacher": teacher,
                "dataset": train,
                "validation_dataset": dev,
                "student": TINY_STUDENT,
                "init_from": {"job": job["id"]},
                "hyperparameters": {"epochs": 1, "batch_size": 16, "max_seq_length": 32},
            },
        ).json()
        assert follow_up["init_from"] == {"job": job["id"], "step": last["step"]}
        finished = wait_for(client, follow_up["id"], worker)
        assert finished["status"] == "succeeded", finished["error"]
    finally:
        receiver.server.shutdown()
