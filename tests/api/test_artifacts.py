"""Artifact downloads stream from storage with the contract a resuming client relies on:
Content-Length, the sha256 as ETag, one byte Range (a-b, a-, -n), If-Range, 416 and 410."""

from __future__ import annotations

import hashlib
import io
import random
import tracemalloc

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.artifacts import repository
from app.artifacts.models import Artifact
from app.storage import CHUNK, get_storage
from tests.factories import TINY_SENTIMENT

HUB_TEACHER = "google-bert/bert-base-uncased"
CONTENT = random.Random(9).randbytes(2 * CHUNK + 12_345)  # three storage chunks
SIZE = len(CONTENT)
SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture()
def job_id(client: TestClient) -> str:
    data = (TINY_SENTIMENT / "train.jsonl").read_bytes()
    dataset = client.post("/v1/datasets", files={"file": ("t.jsonl", data)}).json()["id"]
    response = client.post("/v1/jobs", json={"teacher": HUB_TEACHER, "dataset": dataset})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def store_artifact(
    session: Session, tenant: str, job_id: str, name: str = "student.zip", content: bytes = CONTENT
) -> Artifact:
    """What the worker leaves: the object put through storage, then its row."""
    key = f"tenants/{tenant}/jobs/{job_id}/artifacts/{name}"
    stored = get_storage().put(key, io.BytesIO(content))
    artifact = Artifact(
        job_id=job_id,
        tenant_id=tenant,
        name=name,
        content_type="application/zip",
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
        storage_key=key,
    )
    repository.replace(session, artifact)
    session.commit()  # a savepoint release: the test's transaction still rolls back
    return artifact


@pytest.fixture()
def url(client: TestClient, db_session: Session, job_id: str) -> str:
    store_artifact(db_session, client.tenant, job_id)  # type: ignore[attr-defined]
    return f"/v1/jobs/{job_id}/artifacts/student.zip"


def test_whole_download_carries_length_etag_and_accept_ranges(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 200
    assert response.content == CONTENT
    assert response.headers["content-length"] == str(SIZE)
    assert response.headers["etag"] == f'"{SHA}"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == 'attachment; filename="student.zip"'
    assert "content-range" not in response.headers


def test_listing_shows_the_stored_size_and_sha(client: TestClient, url: str, job_id: str) -> None:
    [listed] = client.get(f"/v1/jobs/{job_id}/artifacts").json()
    assert (listed["name"], listed["size_bytes"], listed["sha256"]) == ("student.zip", SIZE, SHA)


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, SIZE - 1),
        ("bytes=-10", SIZE - 10, SIZE - 1),
        ("bytes=7-7", 7, 7),
        (f"bytes={CHUNK - 3}-{CHUNK + 2}", CHUNK - 3, CHUNK + 2),  # across a chunk boundary
        (f"bytes={SIZE - 5}-{SIZE + 1000}", SIZE - 5, SIZE - 1),  # an end past the object
        (f"bytes=-{SIZE + 5}", 0, SIZE - 1),  # a suffix longer than the object
        ("Bytes = 3 - 9", 3, 9),  # unit case and spaces are not significant
    ],
)
def test_one_range_is_a_206_with_exactly_those_bytes(
    client: TestClient, url: str, header: str, first: int, last: int
) -> None:
    response = client.get(url, headers={"Range": header})
    assert response.status_code == 206
    assert response.content == CONTENT[first : last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert response.headers["content-length"] == str(last - first + 1)
    assert response.headers["etag"] == f'"{SHA}"'


def test_two_ranged_halves_rebuild_the_artifact(client: TestClient, url: str) -> None:
    head = client.get(url, headers={"Range": "bytes=0-99"}).content
    tail = client.get(url, headers={"Range": "bytes=100-"}).content
    assert hashlib.sha256(head + tail).hexdigest() == SHA


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0"])
def test_a_range_outside_the_artifact_is_416(client: TestClient, url: str, header: str) -> None:
    response = client.get(url, headers={"Range": header})
    assert response.status_code == 416
    assert response.json()["error"]["code"] == "range_not_satisfiable"
    assert response.headers["content-range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize(
    "header", ["bytes=0-1,5-6", "bytes=abc", "items=0-5", "bytes=9-3", "bytes=-", "0-5"]
)
def test_several_or_unreadable_ranges_get_the_whole_artifact(
    client: TestClient, url: str, header: str
) -> None:
    response = client.get(url, headers={"Range": header})
    assert response.status_code == 200
    assert response.content == CONTENT


def test_if_range_with_the_current_etag_or_date_resumes(client: TestClient, url: str) -> None:
    last_modified = client.get(url).headers["last-modified"]
    for validator in (f'"{SHA}"', last_modified):
        response = client.get(url, headers={"Range": "bytes=10-", "If-Range": validator})
        assert response.status_code == 206
        assert response.content == CONTENT[10:]


@pytest.mark.parametrize("validator", ['"0000"', f'W/"{SHA}"', "Thu, 01 Jan 1970 00:00:00 GMT"])
def test_if_range_naming_another_version_gets_the_whole_artifact(
    client: TestClient, url: str, validator: str
) -> None:
    response = client.get(url, headers={"Range": "bytes=10-", "If-Range": validator})
    assert response.status_code == 200
    assert response.content == CONTENT
    assert "content-range" not in response.headers


def test_an_empty_artifact_downloads_empty_and_refuses_every_range(
    client: TestClient, db_session: Session, job_id: str
) -> None:
    store_artifact(db_session, client.tenant, job_id, "empty.txt", b"")  # type: ignore[attr-defined]
    url = f"/v1/jobs/{job_id}/artifacts/empty.txt"
    whole = client.get(url)
    assert (whole.status_code, whole.content, whole.headers["content-length"]) == (200, b"", "0")
    assert client.get(url, headers={"Range": "bytes=0-"}).status_code == 416


def test_a_recorded_artifact_whose_object_is_gone_is_410(
    client: TestClient, db_session: Session, job_id: str
) -> None:
    artifact = store_artifact(db_session, client.tenant, job_id)  # type: ignore[attr-defined]
    get_storage().delete(artifact.storage_key)
    response = client.get(f"/v1/jobs/{job_id}/artifacts/student.zip")
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "artifact_missing"


def test_unknown_artifact_and_unknown_job_are_404(
    client: TestClient, url: str, job_id: str
) -> None:
    missing = client.get(f"/v1/jobs/{job_id}/artifacts/teacher.zip")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "artifact_not_found")
    for path in ("/v1/jobs/job_nope/artifacts/student.zip", "/v1/jobs/job_nope/artifacts"):
        response = client.get(path)
        assert (response.status_code, response.json()["error"]["code"]) == (404, "job_not_found")


def test_a_large_download_streams_in_bounded_memory(
    client: TestClient, db_session: Session, job_id: str
) -> None:
    big = random.Random(3).randbytes(16 * CHUNK)
    store_artifact(db_session, client.tenant, job_id, "big.bin", big)  # type: ignore[attr-defined]
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        with client.stream("GET", f"/v1/jobs/{job_id}/artifacts/big.bin") as response:
            for chunk in response.iter_raw():
                digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.hexdigest() == hashlib.sha256(big).hexdigest()
    assert peak < 6 * CHUNK, f"peak {peak} bytes for a {len(big)} byte artifact"


def test_read_ahead_keeps_the_order_and_closes_the_file_when_the_client_leaves() -> None:
    import threading
    from collections.abc import Iterator

    import anyio

    from app.artifacts.download import read_ahead

    closed = threading.Event()

    def chunks() -> Iterator[bytes]:
        try:
            for i in range(100):
                yield bytes([i]) * 10
        finally:
            closed.set()

    async def whole() -> list[bytes]:
        return [c async for c in read_ahead(iter([b"a", b"b", b"c"]))]

    source = chunks()  # held here, so only read_ahead can close it (not the garbage collector)

    async def leave_after_two() -> list[bytes]:
        stream = read_ahead(source)
        got = [await anext(stream), await anext(stream)]
        await stream.aclose()  # the client went away with the next read in flight
        return got

    assert anyio.run(whole) == [b"a", b"b", b"c"]
    assert anyio.run(leave_after_two) == [bytes([0]) * 10, bytes([1]) * 10]
    assert closed.wait(timeout=30), "the source was never closed"


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("bytes=0-" + "9" * 5000, 206),  # to the end
        ("bytes=" + "9" * 5000 + "-", 416),  # starts past the end
        ("bytes=-" + "9" * 5000, 206),  # the last n bytes: all of them
    ],
)
def test_a_range_with_a_5000_digit_number_is_read_not_a_500(
    client: TestClient, url: str, header: str, status: int
) -> None:
    response = client.get(url, headers={"Range": header})
    assert response.status_code == status
    if status == 206:
        assert response.content == CONTENT
        assert response.headers["content-range"] == f"bytes 0-{SIZE - 1}/{SIZE}"
    else:
        assert response.json()["error"]["code"] == "range_not_satisfiable"
        assert response.headers["content-range"] == f"bytes */{SIZE}"
