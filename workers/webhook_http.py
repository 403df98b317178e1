"""One webhook POST, safe against the receiver: the target's name is resolved once, every
address it gives must be globally routable (unless private networks are allowed), and the
connection goes to the address that was checked, with TLS verified (and SNI sent) for the
URL's name. One wall-clock deadline covers connect, TLS, send and read, and at most a few KiB of
the answer are read: a receiver that trickles bytes cannot hold a worker thread.

httpcore rather than httpx: its network backend is the documented place to decide where a
connection goes, so no second DNS lookup can happen behind the check.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore

from app.config import Settings
from app.jobs.webhook_targets import IPAddress, is_public, url_problem

# What a tenant sees for a target it may not use. The same text whatever lies behind the
# address (a closed port, an open one, nothing): the delivery log is no port scanner.
REFUSED = "delivery refused: the target must be https and resolve only to public addresses"


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None  # None: the receiver answered 2xx


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def clamp(self, timeout: float | None) -> float:
        """The time one network operation may take: what is left of the whole budget."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the delivery deadline passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self.inner, self.deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.clamp(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.deadline.clamp(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self.inner.start_tls(ssl_context, server_hostname, self.deadline.clamp(timeout))
        return _DeadlineStream(tls, self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the one checked address, whatever host the request names."""

    def __init__(self, address: IPAddress, deadline: _Deadline) -> None:
        self.address, self.deadline = address, deadline
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self.inner.connect_tcp(
            str(self.address),
            port,
            timeout=self.deadline.clamp(timeout),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream, self.deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks go over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def resolve(url: str, *, allow_private: bool) -> IPAddress | None:
    """The address to connect to, or None when the target is refused: every address the name
    resolves to must be public, so a round-robin entry cannot slip a private one in."""
    if url_problem(url, allow_private=allow_private) is not None:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses or not (allow_private or all(is_public(a) for a in addresses)):
        return None
    return addresses[0]


def post(url: str, *, content: bytes, headers: dict[str, str], settings: Settings) -> Outcome:
    """POST `content` to `url` once, within settings.webhook_timeout_seconds in all."""
    deadline = _Deadline(settings.webhook_timeout_seconds)
    address = resolve(url, allow_private=settings.webhook_allow_private_networks)
    if address is None:
        return Outcome(None, REFUSED)
    budget = deadline.clamp(None)
    timeouts = {"connect": budget, "read": budget, "write": budget, "pool": budget}
    pool = httpcore.ConnectionPool(
        ssl_context=ssl.create_default_context(),
        network_backend=_PinnedBackend(address, deadline),
        retries=0,
    )
    try:
        with (
            pool,
            pool.stream(
                "POST",
                url,
                headers=list(headers.items()),
                content=content,
                extensions={"timeout": timeouts},
            ) as response,
        ):
            read = 0
            for chunk in response.iter_stream():
                read += len(chunk)
                if read >= settings.webhook_max_response_bytes:
                    break  # the status is all we need; the rest is the receiver's business
            status = response.status
    except httpcore.TimeoutException:
        return Outcome(None, f"no answer within {settings.webhook_timeout_seconds:g} s")
    except httpcore.ConnectError:
        return Outcome(None, "could not connect to the receiver")
    except (httpcore.NetworkError, ssl.SSLError, OSError):
        return Outcome(None, "the connection to the receiver broke")
    except httpcore.ProtocolError:
        return Outcome(None, "the receiver's answer was not valid HTTP")
    if not 200 <= status < 300:
        return Outcome(status, f"the receiver answered {status}")
    return Outcome(status, None)
