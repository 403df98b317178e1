"""An oversized upload is refused before anything spools it to disk."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.config import get_settings


@pytest.fixture()
def small_cap(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setenv("DISTILLERY_MAX_DATASET_BYTES", "1000")
    get_settings.cache_clear()
    yield 1000
    monkeypatch.undo()
    get_settings.cache_clear()


def test_declared_length_over_the_cap_is_413(client: TestClient, small_cap: int) -> None:
    body = b"x" * (small_cap + 70 * 1024)
    response = client.post("/v1/datasets", files={"file": ("big.jsonl", body)})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"


def test_streamed_body_over_the_cap_is_413(client: TestClient, small_cap: int) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes are counted as they come
        for _ in range(200):
            yield b"y" * 1024

    response = client.post(
        "/v1/datasets",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413


def test_other_routes_are_not_capped(client: TestClient, small_cap: int) -> None:
    response = client.post("/v1/jobs", json={"teacher": "x" * 2000, "dataset": "ds_x"})
    assert response.status_code == 422  # validated, not cut off


def _json_over(limit: int) -> bytes:
    return b'{"teacher": "' + b"x" * limit + b'", "dataset": "ds_x"}'


def test_a_json_body_over_the_default_cap_is_413(client: TestClient) -> None:
    body = _json_over(get_settings().max_json_body_bytes)
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_a_streamed_json_body_over_the_cap_is_413(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISTILLERY_MAX_JSON_BODY_BYTES", "1000")
    get_settings.cache_clear()

    def chunks() -> Iterator[bytes]:  # chunked, no Content-Length: counted as it comes
        yield b'{"teacher": "'
        for _ in range(200):
            yield b"x" * 100
        yield b'", "dataset": "ds_x"}'

    try:
        response = client.post(
            "/v1/jobs", content=chunks(), headers={"content-type": "application/json"}
        )
        also = client.post("/v1/jobs/job_x/cancel", content=_json_over(1000))
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "body_too_large",
        "message": "the request body is larger than the 1000 byte limit",
    }
    assert also.status_code == 413
