"""A real HTTP server on 127.0.0.1 that forwards to the app in process and fails chosen
requests the way networks and proxies do. A test tool, not a test file."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi.testclient import TestClient

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

    def do_DELETE(self) -> None:
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


@contextmanager
def serve(upstream: TestClient) -> Iterator[FaultyProxy]:
    """A FaultyProxy listening on a free port until the block ends."""
    state = FaultyProxy(upstream=upstream)
    server = _ProxyServer(("127.0.0.1", 0), _Handler)
    server.proxy = state
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
