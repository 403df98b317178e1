"""Closed-loop HTTP load from a process of its own: wrk when installed, else an async httpx
generator (this file run as a script). Both bounded by time and by a request count, both
report the same fields. Also a /healthz prober that runs beside the load, as a load balancer
would.

    apt-get install -y wrk      # Debian/Ubuntu; `brew install wrk` on macOS
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# The fields one run reports, whichever generator made it.
RESULT_FIELDS = (
    "requests",
    "duration_s",
    "rps",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "status_2xx",
    "status_4xx",
    "status_5xx",
    "timeouts",
    "conn_errors",
    "unanswered",
    "capped",
)


@dataclass(frozen=True)
class Target:
    """What to send: paths are used in turn (one per request), the body with every request."""

    name: str
    method: str
    paths: tuple[str, ...]
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run(
    generator: str,
    base_url: str,
    target: Target,
    *,
    connections: int,
    duration_s: float,
    timeout_s: float,
    max_requests: int,
) -> dict[str, Any]:
    """One closed-loop run: `connections` clients, each sending its next request as soon as
    the last one is answered."""
    if generator == "wrk":
        return _run_wrk(base_url, target, connections, duration_s, timeout_s, max_requests)
    spec = {
        "base_url": base_url,
        "target": asdict(target),
        "connections": connections,
        "duration_s": duration_s,
        "timeout_s": timeout_s,
        "max_requests": max_requests,
    }
    done = subprocess.run(
        [sys.executable, __file__, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        timeout=duration_s + timeout_s + 60,
    )
    if done.returncode:
        raise SystemExit(f"the httpx load generator failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --- wrk ---

_WRK_SCRIPT = """
local paths = {%(paths)s}
local method, body = %(method)s, %(body)s
local headers = {%(headers)s}
local max_requests = %(max_requests)d
local threads, i = {}, 0
function setup(thread) table.insert(threads, thread) end
function init(args) c2, c4, c5, cother, seen, sent = 0, 0, 0, 0, 0, 0 end
function request()
  sent = sent + 1
  i = i %% #paths + 1
  return wrk.format(method, paths[i], headers, body)
end
function response(status, hdrs, b)
  seen = seen + 1
  if status >= 500 then c5 = c5 + 1
  elseif status >= 400 then c4 = c4 + 1
  elseif status >= 200 and status < 300 then c2 = c2 + 1
  else cother = cother + 1 end
  if seen >= max_requests then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local t = {c2 = 0, c4 = 0, c5 = 0, cother = 0, seen = 0, sent = 0}
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + th:get(k) end
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,"max_us":%%d,' ..
    '"c2":%%d,"c4":%%d,"c5":%%d,"cother":%%d,"timeouts":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"seen":%%d,"sent":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, t.c2, t.c4, t.c5, t.cother, e.timeout, e.connect, e.read, e.write, t.seen, t.sent))
end
"""


def _lua(value: str | None) -> str:
    return "nil" if value is None else json.dumps(value)  # a JSON string is a Lua string


def _run_wrk(
    base_url: str,
    target: Target,
    connections: int,
    duration_s: float,
    timeout_s: float,
    max_requests: int,
) -> dict[str, Any]:
    headers = ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in target.headers.items())
    # wrk runs the Lua per thread: the cap is split between its threads.
    threads = 1 if connections < 16 else 2
    script = _WRK_SCRIPT % {
        "paths": ", ".join(_lua(p) for p in target.paths),
        "method": _lua(target.method),
        "body": _lua(target.body),
        "headers": headers,
        "max_requests": max(1, max_requests // threads),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        f.name,
        base_url,
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=duration_s + 60
        )
    finally:
        Path(f.name).unlink(missing_ok=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    duration = raw["duration_us"] / 1e6
    errors = raw["timeouts"] + raw["connect"] + raw["read"] + raw["write"]
    return {
        "requests": raw["requests"],
        "duration_s": duration,
        "rps": raw["requests"] / duration if duration else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "status_2xx": raw["c2"],
        "status_4xx": raw["c4"],
        "status_5xx": raw["c5"],
        "timeouts": raw["timeouts"],
        "conn_errors": raw["connect"] + raw["read"] + raw["write"],
        # sent, neither answered nor failed when wrk stopped: cut off by the deadline (one
        # request per client is normal); wrk builds one request per thread that is never sent
        "unanswered": max(0, raw["sent"] - threads - raw["seen"] - errors),
        "capped": raw["seen"] >= max_requests - threads,
    }


# --- the httpx fallback, run as `python bench/_loadgen.py SPEC` ---


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    target = Target(**{**spec["target"], "paths": tuple(spec["target"]["paths"])})
    n_conn, max_requests = int(spec["connections"]), int(spec["max_requests"])
    latencies: list[float] = []
    counts: Counter[str] = Counter()
    sent = 0
    limits = httpx.Limits(max_connections=n_conn, max_keepalive_connections=n_conn)
    timeout = httpx.Timeout(float(spec["timeout_s"]))
    body = target.body.encode() if target.body is not None else None
    async with httpx.AsyncClient(
        base_url=spec["base_url"], limits=limits, timeout=timeout, headers=target.headers
    ) as client:
        start = time.perf_counter()
        deadline = start + float(spec["duration_s"])

        async def one_client() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < max_requests:
                path = target.paths[sent % len(target.paths)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    response = await client.request(target.method, path, content=body)
                except httpx.TimeoutException:
                    counts["timeouts"] += 1
                    continue
                except httpx.TransportError:
                    counts["conn_errors"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                counts[f"status_{response.status_code // 100}xx"] += 1

        await asyncio.gather(*(one_client() for _ in range(n_conn)))
        duration = time.perf_counter() - start
    latencies.sort()

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0
        )

    return {
        "requests": len(latencies),
        "duration_s": duration,
        "rps": len(latencies) / duration if duration else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else 0.0,
        **{k: counts[k] for k in ("status_2xx", "status_4xx", "status_5xx")},
        "timeouts": counts["timeouts"],
        "conn_errors": counts["conn_errors"],
        "unanswered": 0,  # every client waits for its last request (answer or timeout)
        "capped": sent >= max_requests,
    }


# --- the /healthz prober ---


class Prober:
    """GET /healthz every `interval_s` on a fresh connection, as a load balancer's health check
    does, from a thread of the bench process; a probe slower than `timeout_s` has failed."""

    def __init__(self, base_url: str, *, interval_s: float = 0.1, timeout_s: float = 2.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.latencies: list[float] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="healthz-prober", daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                conn.request("GET", "/healthz")
                ok = conn.getresponse().status == 200
            except OSError:  # socket.timeout included
                ok = False
            finally:
                conn.close()
            elapsed = time.perf_counter() - t0
            if ok:
                self.latencies.append(elapsed)
            else:
                self.failed += 1
            self._stop.wait(max(0.0, self.interval_s - elapsed))

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else None

        return {
            "probes": len(lat) + self.failed,
            "failed": self.failed,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "max_ms": lat[-1] * 1000 if lat else None,
        }


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    try:
        import uvloop  # uvicorn[standard] brings it; about twice the rate of asyncio's loop
    except ImportError:
        print(json.dumps(asyncio.run(_generate(spec))))
    else:
        print(json.dumps(uvloop.run(_generate(spec))))
