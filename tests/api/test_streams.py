"""Event streams and downloads hold no database connection while they are open (issue 12:
sixteen streams on one queued job left fifteen connections idle in transaction, and a plain
GET then waited for the pool), at most `max_streams_per_tenant` are open per tenant, and none
lives longer than `stream_max_seconds`. Each test runs its own API process, with its settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import redis

from app.auth.service import create_key
from app.db import session_factory
from client import parse_sse
from tests.api.test_artifacts import store_artifact
from tests.conftest import PG_ADMIN_URL, TEST_DB
from tests.factories import HUB_TEACHER, TINY_SENTIMENT, TINY_STUDENT
from tests.liveserver import live_api

POOL = 2


@contextmanager
def queued_job(tmp_path: Path, tenant: str, **env: str) -> Iterator[tuple[httpx.Client, str]]:
    """An API process run with `env`, a client with a key of `tenant`, and a queued job."""
    with session_factory().begin() as s:
        _, key = create_key(s, tenant_id=tenant)
    with (
        live_api(tmp_path / "api.log", **env) as base_url,
        httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client,
    ):
        content = (TINY_SENTIMENT / "train.jsonl").read_bytes()
        dataset = client.post("/v1/datasets", files={"file": ("t.jsonl", content)}).json()["id"]
        body = {"teacher": HUB_TEACHER, "dataset": dataset, "student": TINY_STUDENT}
        job = client.post("/v1/jobs", json=body)
        assert job.status_code == 201, job.text
        try:
            yield client, job.json()["id"]
        finally:
            client.post(f"/v1/jobs/{job.json()['id']}/cancel")


Opened = list[tuple[httpx.Response, AsyncIterator[str]]]


async def _open_past_first_event(client: httpx.AsyncClient, url: str, opened: Opened) -> None:
    """Open a stream and read up to its first event (so its first poll is done); leave it open.
    The line iterator is kept: one collected early closes the connection."""
    response = await client.send(client.build_request("GET", url), stream=True)
    lines = response.aiter_lines()
    opened.append((response, lines))
    assert response.status_code == 200, await response.aread()
    async for line in lines:
        if line.startswith("id:"):
            return


def _idle_in_transaction() -> int:
    with psycopg.connect(PG_ADMIN_URL) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = %s AND state = 'idle in transaction'",
            (TEST_DB,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_more_streams_than_the_pool_holds_leave_it_free(
    tmp_path: Path, database: str, queue: redis.Redis
) -> None:
    streams = 3 * POOL
    with queued_job(
        tmp_path,
        "streams-pool",
        DISTILLERY_DB_POOL_SIZE=str(POOL),
        DISTILLERY_DB_MAX_OVERFLOW="0",
        DISTILLERY_DB_POOL_TIMEOUT_SECONDS="3",  # a request left waiting answers 503, not hangs
    ) as (client, job_id):
        url = f"{client.base_url}/v1/jobs/{job_id}/events?stream=true"

        async def main() -> tuple[int, int, int]:
            opened: Opened = []
            async with httpx.AsyncClient(headers=client.headers, timeout=60) as http:
                try:
                    await asyncio.gather(
                        *(_open_past_first_event(http, url, opened) for _ in range(streams))
                    )
                    held = _idle_in_transaction()
                    plain = await http.get(f"{client.base_url}/v1/jobs/{job_id}")
                    ready = await http.get(f"{client.base_url}/readyz")
                finally:
                    for response, _ in opened:
                        await response.aclose()
            return held, plain.status_code, ready.status_code

        assert asyncio.run(main()) == (0, 200, 200)


def test_streams_and_downloads_past_the_tenant_s_cap_are_429(
    tmp_path: Path, database: str, queue: redis.Redis
) -> None:
    with queued_job(tmp_path, "streams-cap", DISTILLERY_MAX_STREAMS_PER_TENANT="2") as (
        client,
        job_id,
    ):
        with session_factory()() as s:  # committed: the API process reads it
            store_artifact(s, "streams-cap", job_id)
        url = f"{client.base_url}/v1/jobs/{job_id}/events?stream=true"
        download = f"{client.base_url}/v1/jobs/{job_id}/artifacts/student.zip"

        async def main() -> tuple[httpx.Response, httpx.Response]:
            opened: Opened = []
            async with httpx.AsyncClient(headers=client.headers, timeout=60) as http:
                try:
                    for _ in range(2):
                        await _open_past_first_event(http, url, opened)
                    # refused, so they end at once (30 s: a guard against a hang)
                    return await http.get(url, timeout=30), await http.get(download, timeout=30)
                finally:
                    for response, _ in opened:
                        await response.aclose()

        for refused in asyncio.run(main()):
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_streams"
            assert refused.headers["retry-after"]


def test_a_stream_ends_after_its_lifetime_and_resumes_from_last_event_id(
    tmp_path: Path, database: str, queue: redis.Redis
) -> None:
    with queued_job(tmp_path, "streams-life", DISTILLERY_STREAM_MAX_SECONDS="0.2") as (
        client,
        job_id,
    ):
        url = f"/v1/jobs/{job_id}/events"

        def read(headers: dict[str, str]) -> list[tuple[str | None, str, str]]:
            # the job stays queued: without a lifetime this read would never end
            with client.stream(
                "GET", url, params={"stream": "true"}, headers=headers, timeout=30
            ) as r:  # 30 s: a guard against the hang that a stream without a lifetime is
                assert r.status_code == 200
                return list(parse_sse(r.iter_lines()))

        first = read({})
        assert [kind for _, kind, _ in first] == ["job_created"]
        again = read({"Last-Event-ID": str(first[-1][0])})
        assert again == []  # resumed after it: nothing repeated
        assert client.get(url).json()["data"][0]["type"] == "job_created"
