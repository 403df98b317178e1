"""The client against the real app: in process (TestClient), or through a real HTTP server on
127.0.0.1 that forwards to it and fails chosen requests the way networks and proxies do."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.artifacts import repository as artifacts_repository
from app.base import utcnow
from app.client import DistilleryClient
from app.db import session_factory
from app.jobs import repository as jobs_repository
from app.storage import get_storage
from app.tables import Artifact, Job
from tests.factories import jsonl_bytes

# Accepted without loading anything: the worker, which these tests never start, resolves it.
HUB_TEACHER = "google-bert/bert-base-uncased"

FaultKind = Literal["503", "404", "drop", "lose", "truncate", "cut"]


@dataclass
class Fault:
    """What the proxy does to the next request that matches method and path prefix.

    503/404: answer that without forwarding. drop: close the socket without an answer.
    lose: forward (the server acts), then answer 503 as if the response were lost.
    truncate: forward, announce the full Content-Length, send only keep(body) bytes, close.
    cut: forward, send keep(body) bytes as a close-delimited body, close cleanly.
    """

    kind: FaultKind
    method: str | None = None
    path: str = "/"
    keep: Callable[[bytes], int] = lambda body: len(body) // 2


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    fault: FaultKind | None
    status: int | None = None
    body_bytes: int = 0


@dataclass
class FaultyProxy:
    upstream: TestClient
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def take(self, method: str, path: str) -> Fault | None:
        for i, fault in enumerate(self.faults):
            if fault.method in (None, method) and path.startswith(fault.path):
                return self.faults.pop(i)
        return None

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and urlsplit(s.path).path == path]


class _Handler(BaseHTTPRequestHandler):
    server: _ProxyServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = proxy.take(self.command, urlsplit(self.path).path)
        seen = Seen(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            fault.kind if fault else None,
        )
        proxy.seen.append(seen)
        if fault is not None and fault.kind == "drop":
            return  # HTTP/1.0: the socket closes with nothing written
        if fault is not None and fault.kind in ("503", "404"):
            return self._reply(
                seen,
                int(fault.kind),
                {},
                json.dumps(
                    {
                        "error": {
                            "code": f"injected_{fault.kind}",
                            "message": "injected by the test proxy",
                        }
                    }
                ).encode(),
            )
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "content-length", "connection")
        }
        response = proxy.upstream.request(self.command, self.path, content=body, headers=headers)
        out_headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower()
            not in ("content-length", "transfer-encoding", "connection", "content-encoding")
        }
        content = response.content
        if fault is not None and fault.kind == "lose":
            return self._reply(seen, 503, {}, b'{"error": {"code": "lost", "message": "lost"}}')
        if fault is not None and fault.kind == "truncate":
            out_headers["Content-Length"] = str(len(content))
            return self._reply(
                seen,
                response.status_code,
                out_headers,
                content[: fault.keep(content)],
                length=False,
            )
        if fault is not None and fault.kind == "cut":
            return self._reply(
                seen,
                response.status_code,
                out_headers,
                content[: fault.keep(content)],
                length=False,
            )
        self._reply(seen, response.status_code, out_headers, content)

    def _reply(
        self, seen: Seen, status: int, headers: dict[str, str], body: bytes, *, length: bool = True
    ) -> None:
        seen.status, seen.body_bytes = status, len(body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _ProxyServer(HTTPServer):
    proxy: FaultyProxy


@pytest.fixture()
def api(committing_client: TestClient, queue: redis.Redis) -> DistilleryClient:
    """The client over the real app in process (the TestClient sends the tests' API key); the
    run's Redis queue is emptied around it."""
    return DistilleryClient(http=committing_client, backoff=0.01)


@pytest.fixture()
def proxy(committing_client: TestClient, queue: redis.Redis) -> Iterator[FaultyProxy]:
    state = FaultyProxy(upstream=committing_client)
    server = _ProxyServer(("127.0.0.1", 0), _Handler)
    server.proxy = state
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture()
def over_network(proxy: FaultyProxy, api_key: str) -> Iterator[DistilleryClient]:
    """The client with its own httpx.Client and real sockets, through the proxy."""
    with DistilleryClient(proxy.url, api_key=api_key, backoff=0.01, timeout=10) as client:
        yield client


def unique_dataset(directory: Path, rows: int = 8) -> Path:
    """A small valid JSONL file whose bytes (and so sha256) no other test shares."""
    tag = uuid.uuid4().hex
    path = directory / f"ds-{tag[:8]}.jsonl"
    path.write_bytes(
        jsonl_bytes(
            [{"text": f"row {i} {tag}", "label": ("neg", "pos")[i % 2]} for i in range(rows)]
        )
    )
    return path


@pytest.fixture()
def dataset_id(api: DistilleryClient, tmp_path: Path) -> str:
    return api.upload_dataset(unique_dataset(tmp_path)).id


@pytest.fixture()
def job_id(api: DistilleryClient, dataset_id: str) -> str:
    return api.create_job(teacher=HUB_TEACHER, dataset=dataset_id).id


def finish_job(
    job_id: str, *, status: str = "succeeded", artifacts: dict[str, bytes] | None = None
) -> None:
    """End a job as the worker would: artifacts in real storage, rows and event in the DB."""
    with session_factory().begin() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=status,
                stage="done",
                finished_at=utcnow(),
                metrics={"student": {"accuracy": 0.875}} if status == "succeeded" else None,
            )
        )
        for name, content in (artifacts or {}).items():
            key = f"tenants/{job.tenant_id}/jobs/{job_id}/artifacts/{name}"
            stored = get_storage().put(key, io.BytesIO(content))
            artifacts_repository.replace(
                s,
                Artifact(
                    job_id=job_id,
                    tenant_id=job.tenant_id,
                    name=name,
                    content_type="application/octet-stream",
                    size_bytes=stored.size_bytes,
                    sha256=stored.sha256,
                    storage_key=key,
                ),
            )
        jobs_repository.add_event(
            s,
            job_id=job_id,
            tenant_id=job.tenant_id,
            type=f"job_{status}",
            message=f"job {status}",
            data={},
        )
