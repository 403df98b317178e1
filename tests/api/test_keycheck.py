"""The API key is checked before a byte of the request body is read (issue 12: an unknown key
with a 64 MiB JSON body had it read and parsed before the 401)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session

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
