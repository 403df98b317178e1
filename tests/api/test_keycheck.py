"""The API key is checked before a byte of the request body is read (issue 12: an unknown key
with a 64 MiB JSON body had it read and parsed before the 401)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session

from tests.liveserver import live_api

MiB = 1024 * 1024
BODY_ROUTES = [
    ("/v1/jobs", "application/json"),
    ("/v1/jobs/job_x/cancel", "application/json"),
    ("/v1/datasets", "multipart/form-data; boundary=b"),
    ("/v1/models", "multipart/form-data; boundary=b"),
]


class Body:
    """A request body of `chunks` MiB, made only as the server reads it; it counts what was
    taken and refuses to go past a few MiB, so a server that reads it fails the test rather
    than the machine's memory."""

    def __init__(self, chunks: int = 4096) -> None:  # 4 GiB: over every cap
        self.chunks = chunks
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += 1
            if self.pulled > 4:
                raise AssertionError("the server read the body of a request it should refuse")
            yield b" " * MiB


@pytest.mark.parametrize(("path", "content_type"), BODY_ROUTES)
@pytest.mark.parametrize(
    "authorization", ["Bearer dk_not_a_key", "Basic abc", None], ids=["unknown", "basic", "none"]
)
def test_a_bad_key_with_a_huge_streamed_body_is_401_unread(
    client: TestClient, path: str, content_type: str, authorization: str | None
) -> None:
    stranger = TestClient(client.app)
    headers = {"content-type": content_type}
    if authorization is not None:
        headers["authorization"] = authorization
    body = Body()
    response = stranger.post(path, content=iter(body), headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert body.pulled == 0


@pytest.mark.parametrize(("path", "content_type"), BODY_ROUTES)
def test_a_bad_key_with_a_declared_huge_body_is_401_unread(
    client: TestClient, path: str, content_type: str
) -> None:
    stranger = TestClient(client.app, headers={"Authorization": "Bearer dk_not_a_key"})
    body = Body()
    response = stranger.post(
        path,
        content=iter(body),
        headers={"content-type": content_type, "content-length": str(4096 * MiB)},
    )
    assert response.status_code == 401, response.text
    assert body.pulled == 0


def test_an_unknown_key_with_an_invalid_body_is_401_not_422(client: TestClient) -> None:
    stranger = TestClient(client.app, headers={"Authorization": "Bearer dk_not_a_key"})
    response = stranger.post("/v1/jobs", json={"teacher": 1, "unknown": True})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_a_request_with_a_body_looks_its_key_up_once(
    client: TestClient, db_session: Session
) -> None:
    lookups: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "FROM api_keys" in statement:
            lookups.append(statement)

    connection = db_session.connection()
    event.listen(connection, "before_cursor_execute", count)
    try:
        response = client.post("/v1/jobs", json={"teacher": "t", "dataset": "ds_missing"})
        assert response.status_code == 404  # past the key, into the route's own work
        assert len(lookups) == 1
        lookups.clear()
        assert client.get("/v1/jobs").status_code == 200  # no body: looked up in the route
        assert len(lookups) == 1
    finally:
        event.remove(connection, "before_cursor_execute", count)


def test_a_real_server_answers_401_after_the_headers_alone(tmp_path: Path, database: str) -> None:
    """Over a socket to uvicorn: the headers of a 64 MiB JSON body with an unknown key, and
    only its first KiB; the 401 comes back without the rest ever being sent."""
    with live_api(tmp_path / "api.log") as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer dk_not_a_key\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (64 * MiB)
                + b" " * 1024
            )
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)  # 30 s: the guard against a server that waits
                if not chunk:
                    break
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer[:300]
    assert json.loads(body)["error"]["code"] == "unauthorized"
