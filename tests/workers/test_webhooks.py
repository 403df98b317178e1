"""Webhook delivery against real sockets: refused targets, slow and chatty receivers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.config import Settings, get_settings
from app.db import session_factory
from app.jobs.models import WebhookDelivery
from tests.factories import TINY_SENTIMENT, zip_folder
from workers.webhook_http import REFUSED, post
from workers.webhooks import sweep


def settings_with(**values: object) -> Settings:
    return get_settings().model_copy(update=values)


class RawServer:
    """A real TCP server on 127.0.0.1 that reads a request and answers with `answer`, which
    gets the connection; it counts the connections it accepted and the bytes it sent."""

    def __init__(self, answer: Callable[[socket.socket, RawServer], None]) -> None:
        self.answer = answer
        self.accepted = 0
        self.sent = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            received = b""
            try:
                while b"\r\n\r\n" not in received:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    received += chunk
                self.answer(conn, self)
            except OSError:
                return  # the client hung up: what a deadline does

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


@pytest.fixture()
def servers() -> Iterator[list[RawServer]]:
    started: list[RawServer] = []
    yield started
    for server in started:
        server.close()


def answer_204(conn: socket.socket, server: RawServer) -> None:
    conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")


def trickle(conn: socket.socket, server: RawServer) -> None:
    """A whole, valid answer, one byte every 0.1 s: 4 s in all."""
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Slow: 1\r\n\r\n":
        conn.sendall(bytes([byte]))
        server.sent += 1
        time.sleep(0.1)  # the trickle itself, not a synchronisation


BODY = 64 * 1024 * 1024


def chatty(conn: socket.socket, server: RawServer) -> None:
    """A 2xx with a 64 MiB body, sent as fast as the client reads it."""
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n".encode())
    block = b"x" * 65536
    while server.sent < BODY:
        conn.sendall(block)
        server.sent += len(block)


def send(url: str, settings: Settings) -> tuple[int | None, str | None]:
    outcome = post(
        url, content=b"{}", headers={"content-type": "application/json"}, settings=settings
    )
    return outcome.status_code, outcome.error


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "[::1]", "10.0.0.1", "169.254.169.254", "[::ffff:10.0.0.1]", "localhost"],
)
def test_private_targets_are_refused_at_delivery_without_a_connection(
    host: str, servers: list[RawServer]
) -> None:
    server = RawServer(answer_204)
    servers.append(server)
    strict = settings_with(webhook_allow_private_networks=False)
    # https, as production requires: the refusal is about the address, not the scheme
    assert send(f"https://{host}:{server.port}/hook", strict) == (None, REFUSED)
    assert send(f"http://{host}:{server.port}/hook", strict) == (None, REFUSED)
    # a closed port reads exactly the same: the delivery log tells nothing about ports
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert send(f"https://{host}:{port}/hook", strict) == (None, REFUSED)
    assert server.accepted == 0


def test_private_targets_are_allowed_when_the_setting_says_so(servers: list[RawServer]) -> None:
    server = RawServer(answer_204)
    servers.append(server)
    relaxed = settings_with(webhook_allow_private_networks=True)
    assert send(server.url(), relaxed) == (204, None)
    assert send(f"http://localhost:{server.port}/hook", relaxed) == (204, None)
    assert server.accepted == 2


def test_a_trickling_receiver_is_cut_off_at_the_total_deadline(servers: list[RawServer]) -> None:
    server = RawServer(trickle)
    servers.append(server)
    # every byte arrives well within any per-read timeout; only the total deadline ends it
    status, error = send(server.url(), settings_with(webhook_timeout_seconds=0.5))
    assert (status, error) == (None, "no answer within 0.5 s")


def test_only_a_bounded_part_of_the_answer_is_read(servers: list[RawServer]) -> None:
    server = RawServer(chatty)
    servers.append(server)
    assert send(server.url(), settings_with(webhook_max_response_bytes=4096)) == (200, None)
    assert server.sent < BODY  # the delivery hung up long before the body's end


def create_job(client: TestClient, teacher_dir: Path, webhook_url: str) -> str:
    train = (TINY_SENTIMENT / "train.jsonl").read_bytes()
    ds = client.post("/v1/datasets", files={"file": ("t.jsonl", train)}).json()["id"]
    teacher = client.post("/v1/models", files={"file": ("t.zip", zip_folder(teacher_dir))})
    body = {"teacher": teacher.json()["id"], "dataset": ds, "webhook_url": webhook_url}
    job = client.post("/v1/jobs", json=body).json()
    assert job["status"] == "queued", job
    return str(job["id"])


def deliveries(job_id: str) -> list[tuple[str, int, int | None]]:
    with session_factory()() as s:
        rows = s.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.id)
        )
        return [(r.state, r.attempt, r.status_code) for r in rows]


@pytest.fixture()
def broker_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A broker address nobody listens on: every send really fails, as in an outage."""
    monkeypatch.setenv("DISTILLERY_BROKER_URL", "redis://127.0.0.1:1/15")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_a_cancel_in_a_broker_outage_keeps_its_webhook_pending_until_the_sweep(
    committing_client: TestClient,
    tiny_teacher_dir: Path,
    queue: redis.Redis,
    servers: list[RawServer],
    request: pytest.FixtureRequest,
) -> None:
    server = RawServer(answer_204)
    servers.append(server)
    job_id = create_job(committing_client, tiny_teacher_dir, server.url())
    request.getfixturevalue("broker_down")
    cancelled = committing_client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    # committed with the job's end, though its message never reached a broker
    assert deliveries(job_id) == [("pending", 1, None)]
    assert server.accepted == 0

    overdue_now = settings_with(webhook_resend_after_seconds=1e-6, webhook_sweep_batch=1000)
    assert sweep(overdue_now)
    assert deliveries(job_id) == [("succeeded", 1, 204)]
    assert server.accepted == 1
    sweep(overdue_now)
    assert server.accepted == 1  # sent once


def answer_500(conn: socket.socket, server: RawServer) -> None:
    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")


def test_failed_attempts_are_recorded_with_a_pending_successor_up_to_the_cap(
    committing_client: TestClient,
    tiny_teacher_dir: Path,
    queue: redis.Redis,
    servers: list[RawServer],
) -> None:
    from sqlalchemy import update

    server = RawServer(answer_500)
    servers.append(server)
    job_id = create_job(committing_client, tiny_teacher_dir, server.url())
    assert committing_client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    capped = settings_with(
        webhook_resend_after_seconds=1e-6, webhook_sweep_batch=1000, webhook_max_attempts=2
    )
    retries = [r for r in sweep(capped) if r is not None and r.job_id == job_id]
    assert [(r.attempt, r.delay) for r in retries] == [(2, 1)]  # the first backoff: 1 s
    assert deliveries(job_id) == [("failed", 1, 500), ("pending", 2, None)]
    with session_factory().begin() as s:  # its backoff has passed
        s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id, WebhookDelivery.attempt == 2)
            .values(due_at=WebhookDelivery.created_at)
        )
    sweep(capped)
    assert deliveries(job_id) == [("failed", 1, 500), ("failed", 2, 500)]  # the cap: no third
    assert server.accepted == 2
