"""The API under load, on PostgreSQL and Redis: GET /v1/jobs/{id}, GET /v1/jobs and POST /v1/jobs
at 8, 64 and 256 concurrent clients, next to /healthz of the same server as the ceiling.

The API runs as its own uvicorn process (as the Dockerfile starts it) on a fresh, migrated
Postgres database; the load comes from wrk (or, without wrk, an async httpx generator) in its
own process; a /healthz prober in this process checks, every 100 ms on a fresh connection, that
the server still answers a load balancer while the other endpoints are loaded. Loopback only;
every run is bounded by --duration and --max-requests.

    apt-get install -y wrk                                    # the load generator (recommended)
    python bench/api_load.py --smoke            # ~1 min: 8 and 64 clients, 2 s each
    python bench/api_load.py                    # ~4 min: 8, 64, 256 clients, 10 s each
    python bench/api_load.py --api-workers 2    # uvicorn --workers 2

Writes bench/results/api_load.json (api_load-smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, log, table, write_json
from _loadgen import Prober, Target, run, wrk_available
from _server import REDIS_URL, CpuMeter, Setup, job_body, running_api, upload_dataset

GETS = ("get_job", "list_jobs")
# Issue 10's targets for the GETs at 64 clients, against /healthz of the same server.
TARGET_LEVEL, MIN_RATE_SHARE, MAX_P99_RATIO = 64, 0.5, 2.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--levels", default="8,64,256", help="concurrent clients, comma-separated")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="a request slower than this is a timeout"
    )
    p.add_argument("--max-requests", type=int, default=500_000, help="cap per run")
    p.add_argument("--jobs", type=int, default=300, help="jobs seeded for the tenant")
    p.add_argument("--api-workers", type=int, default=1, help="uvicorn --workers")
    p.add_argument("--generator", choices=("auto", "wrk", "httpx"), default="auto")
    p.add_argument("--smoke", action="store_true", help="8 and 64 clients, 2 s runs, 100 jobs")
    p.add_argument("--label", default="", help="a note stored with the results (e.g. 'before')")
    p.add_argument("--output", default=None, help="JSON path (default bench/results/api_load.json)")
    args = p.parse_args()
    if args.smoke:  # smaller defaults; flags given explicitly still win
        p.set_defaults(levels="8,64", duration=2.0, warmup=1.0, jobs=100)
        args = p.parse_args()
    args.level_list = [int(x) for x in args.levels.split(",") if x.strip()]
    if args.generator == "auto":
        args.generator = "wrk" if wrk_available() else "httpx"
        if args.generator == "httpx":
            log("wrk not found (apt-get install -y wrk); using the slower httpx generator")
    return args


def seed(setup: Setup, n_jobs: int) -> tuple[list[str], dict[str, Any]]:
    """n_jobs jobs created through the API, then given the mix a live tenant has: most
    succeeded with metrics, some failed, some running, a few queued."""
    import psycopg

    with setup.client(timeout=30) as client:
        body = job_body(upload_dataset(client))
        ids = []
        for _ in range(n_jobs):
            response = client.post("/v1/jobs", json=body)
            if response.status_code != 201:
                raise SystemExit(f"seeding failed: {response.status_code} {response.text}")
            ids.append(str(response.json()["id"]))
    metrics = {
        "teacher": {"accuracy": 0.912, "macro_f1": 0.908, "latency_ms": {"b1": 9.1, "b32": 88.0}},
        "student": {"accuracy": 0.874, "macro_f1": 0.871, "latency_ms": {"b1": 1.9, "b32": 14.2}},
        "retention": {"accuracy": 0.958, "macro_f1": 0.959},
        "parameters": {"teacher": 22_713_216, "student": 4_386_178},
        "size_bytes": {"model": 17_560_000, "onnx": 17_700_000, "onnx_int8": 4_500_000},
        "stages": {s: {"steps": 240, "seconds": 61.5} for s in ("finetune", "inter", "pred")},
    }
    now = datetime.now(UTC)
    url = setup.env["DISTILLERY_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        for i, job_id in enumerate(ids):
            kind = i % 10
            if kind < 7:
                conn.execute(
                    "UPDATE jobs SET status='succeeded', stage='export', step=720, total_steps=720,"
                    " metrics=%s, started_at=%s, finished_at=%s WHERE id=%s",
                    (json.dumps(metrics), now - timedelta(minutes=12), now, job_id),
                )
            elif kind < 8:
                conn.execute(
                    "UPDATE jobs SET status='failed', error_code='teacher_load_failed',"
                    " error_message='the teacher could not be loaded', finished_at=%s WHERE id=%s",
                    (now, job_id),
                )
            elif kind < 9:
                conn.execute(
                    "UPDATE jobs SET status='running', stage='intermediate', step=300,"
                    " total_steps=720, started_at=%s WHERE id=%s",
                    (now, job_id),
                )
    return ids, body


def targets(ids: list[str], body: dict[str, Any], key: str) -> dict[str, Target]:
    auth = {"Authorization": f"Bearer {key}"}
    return {
        "healthz": Target("healthz", "GET", ("/healthz",)),
        "get_job": Target("get_job", "GET", tuple(f"/v1/jobs/{i}" for i in ids), headers=auth),
        "list_jobs": Target("list_jobs", "GET", ("/v1/jobs?limit=20",), headers=auth),
        "post_job": Target(
            "post_job",
            "POST",
            ("/v1/jobs",),
            body=json.dumps(body),
            headers={**auth, "Content-Type": "application/json"},
        ),
    }


def measure(
    args: argparse.Namespace, setup: Setup, plan: dict[str, Target]
) -> list[dict[str, Any]]:
    meter = CpuMeter(setup.api.pid, setup.env["DISTILLERY_DATABASE_URL"].rsplit("/", 1)[1])

    def go(target: Target, clients: int, seconds: float) -> dict[str, Any]:
        api0, pg0 = meter.read()
        result = run(
            args.generator,
            setup.base_url,
            target,
            connections=clients,
            duration_s=seconds,
            timeout_s=args.timeout,
            max_requests=args.max_requests,
        )
        api1, pg1 = meter.read()
        answered = max(1, result["requests"])
        result["api_cpu_ms_per_req"] = (api1 - api0) * 1000 / answered
        result["pg_cpu_ms_per_req"] = max(0.0, pg1 - pg0) * 1000 / answered
        return result

    for name in ("healthz", *GETS):  # imports, prepared statements, pool connections
        go(plan[name], 8, args.warmup)
    rows: list[dict[str, Any]] = []
    for clients in args.level_list:
        for name, target in plan.items():
            log(f"{name} at {clients} clients for {args.duration:g} s")
            if name == "healthz":  # the ceiling: measured alone
                rows.append(
                    {"endpoint": name, "clients": clients, **go(target, clients, args.duration)}
                )
                continue
            with Prober(setup.base_url) as prober:
                result = go(target, clients, args.duration)
            rows.append(
                {"endpoint": name, "clients": clients, **result, "healthz_probe": prober.summary()}
            )
            if setup.api.poll() is not None:
                raise SystemExit("the API process died during the run")
    return rows


def verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 10's targets, each with the numbers it was judged on."""
    ceiling = {r["clients"]: r for r in rows if r["endpoint"] == "healthz"}
    out: dict[str, Any] = {}
    for r in rows:
        c = ceiling[r["clients"]]
        r["rate_share"] = r["rps"] / c["rps"] if c["rps"] else None
        r["p99_ratio"] = r["p99_ms"] / c["p99_ms"] if c["p99_ms"] else None
        probe = r.get("healthz_probe")
        # "unaffected": no probe failed (2 s timeout), and its p99 is within the ceiling run's
        # p99 at the same concurrency (what /healthz costs under its own load).
        r["probe_ok"] = (
            None
            if probe is None
            else probe["failed"] == 0 and (probe["p99_ms"] or 0) <= max(c["p99_ms"], 50.0)
        )
    out["no_5xx_no_timeout"] = all(
        r["status_5xx"] == 0 and r["timeouts"] == 0 and r["conn_errors"] == 0 for r in rows
    )
    for r in rows:
        if r["endpoint"] in GETS and r["clients"] == TARGET_LEVEL:
            out[f"{r['endpoint']}@{TARGET_LEVEL}"] = {
                "rate_share": r["rate_share"],
                "rate_ok": (r["rate_share"] or 0) >= MIN_RATE_SHARE,
                "p99_ratio": r["p99_ratio"],
                "p99_ok": (r["p99_ratio"] or 99) <= MAX_P99_RATIO,
                "healthz_unaffected": r["probe_ok"],
            }
    return out


PROBE_MS = ("p50_ms", "p99_ms", "max_ms")


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    header = ["clients", "endpoint", "req/s", "of ceil", "p50 ms", "p99 ms", "p99/ceil",
              "4xx", "5xx", "t/o", "conn err", "probe p50/p99/max ms", "probe fail",
              "API cpu ms", "PG cpu ms"]  # fmt: skip
    body = []
    for r in rows:
        ceiling = r["endpoint"] == "healthz"
        probe = r.get("healthz_probe")
        body.append([
            r["clients"],
            r["endpoint"] + (" (ceiling)" if ceiling else ""),
            f"{r['rps']:,.0f}",
            "-" if ceiling else f"{r['rate_share']:.1%}",
            ms(r["p50_ms"]),
            ms(r["p99_ms"]),
            "-" if ceiling else f"{r['p99_ratio']:.2f}",
            r["status_4xx"],
            r["status_5xx"],
            r["timeouts"],
            r["conn_errors"],
            "-" if probe is None else "/".join(ms(probe[k]) for k in PROBE_MS),
            "-" if probe is None else probe["failed"],
            f"{r['api_cpu_ms_per_req']:.2f}",
            f"{r['pg_cpu_ms_per_req']:.2f}",
        ])  # fmt: skip
    table(title, header, body)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import fastapi
    import sqlalchemy
    import uvicorn

    wrk = ""
    if args.generator == "wrk":
        done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
        wrk = " ".join((done.stdout or done.stderr).split()[:2])
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "generator": wrk or args.generator,
        "redis": REDIS_URL,
    }


def main() -> None:
    args = parse_args()
    started = time.time()
    env_info = environment(args)
    with running_api("apiload", workers=args.api_workers) as setup:
        log(f"API on {setup.base_url}; seeding {args.jobs} jobs")
        ids, body = seed(setup, args.jobs)
        rows = measure(args, setup, targets(ids, body, setup.api_key))
    result = verdicts(rows)
    kind = "SMOKE, cut: short runs, fewer levels" if args.smoke else "full run"
    title = (
        f"API under load ({kind}) {datetime.now():%Y-%m-%d %H:%M}, "
        f"{env_info['cpu_count']} cores, {args.api_workers} uvicorn worker(s), "
        f"{env_info['generator']}, {args.duration:g} s per run"
        + (f", {args.label}" if args.label else "")
    )
    if args.generator == "httpx":  # one Python process: it saturates long before uvicorn does
        title += "; httpx generator: the rates are its own limit, read API CPU ms/req instead"
    print_table(rows, title)
    print(json.dumps(result, indent=2))
    path = (
        Path(args.output)
        if args.output
        else RESULTS_DIR / ("api_load-smoke.json" if args.smoke else "api_load.json")
    )
    write_json(
        path,
        {
            "bench": "api_load",
            "smoke": args.smoke,
            "label": args.label,
            "date": datetime.now().isoformat(timespec="seconds"),
            "settings": {k: v for k, v in vars(args).items() if k != "level_list"},
            "environment": {**env_info, "load_average_at_end": list(os.getloadavg())},
            "wall_s": time.time() - started,
            "results": rows,
            "targets": result,
        },
    )
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
