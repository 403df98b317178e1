"""End-to-end benchmark of the real service path on rt-polarity, all-MiniLM-L6-v2 as teacher.

Starts the API (uvicorn, app.main:create_app) and one Celery worker as subprocesses on a fresh
temp setup (SQLite + the sqla+sqlite Celery broker unless --database-url/--broker-url say
otherwise), migrates it with Alembic and creates an API key with `distillery-admin keys
create`, then over HTTP: uploads train/dev, creates the job, polls it to the end, reads its
events, downloads student.zip and scores that student on rt-polarity's TEST split. Per-stage
wall time is shown twice: from the job's stage events (server clock) and from the `stage` field
seen by polling (client clock).

    python bench/e2e.py --train-limit 256 --dev-limit 128 --test-limit 256   # smoke: 2-3.5 min
    python bench/e2e.py                               # default: 10-20 min on 2 cores, ~40 busy

Defaults: 3000 stratified training examples, the full dev (1269) and test (1269) splits, 1 epoch
of every stage (teacher fine-tuning, intermediate and prediction distillation: 94 steps each),
tinybert-4l-312d, max_seq_length 128, batch 32, the service's default export (ONNX + int8).
The default's time is the smoke runs' per-step and per-phase times scaled to its size.
Writes bench/results/e2e.json.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (
    DATASETS_DIR,
    RESULTS_DIR,
    ROOT,
    environment,
    fmt_seconds,
    log,
    offline_env,
    read_split,
    score_folder,
    stratified_limit,
    table,
    write_json,
)

offline_env()

import httpx  # noqa: E402

from contract.config import PRESETS  # noqa: E402
from contract.records import to_jsonl  # noqa: E402

DATASET = "rt-polarity"
TEACHER = "all-MiniLM-L6-v2"
TERMINAL = {"succeeded", "failed", "cancelled"}
DEFAULT_TRAIN_LIMIT = 3000
DEFAULT_EPOCHS = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Services:
    """The API and one worker as child processes, logs in the temp folder; stopped on exit."""

    def __init__(self, env: dict[str, str], folder: Path, queue: str) -> None:
        self.env, self.folder, self.queue = env, folder, queue
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def migrate(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise SystemExit(f"alembic upgrade head failed:\n{done.stdout}\n{done.stderr}")

    def create_api_key(self) -> str:
        """`distillery-admin keys create`, the operator's command; the secret is its last line."""
        argv = [
            sys.executable,
            "-m",
            "app.admin",
            "keys",
            "create",
            "--tenant",
            "bench",
            "--name",
            "bench-e2e",
        ]
        done = subprocess.run(
            argv, cwd=ROOT, env=self.env, capture_output=True, text=True, check=False
        )
        lines = [x.strip() for x in done.stdout.splitlines() if x.strip()]
        if done.returncode or not lines:
            raise SystemExit(f"distillery-admin keys create failed:\n{done.stdout}\n{done.stderr}")
        return lines[-1]

    def start(self) -> None:
        self._spawn(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
        )
        self._spawn(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "--pool",
                "solo",
                "-c",
                "1",
                "-Q",
                self.queue,
                "--loglevel",
                "INFO",
                "--hostname",
                f"{self.queue}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        with (self.folder / f"{name}.log").open("wb") as out:
            self.procs[name] = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self, client: httpx.Client, timeout_s: float = 180.0) -> None:
        """Until /readyz answers 200 and the worker has logged 'ready', so that the job's
        queued time is the queue's, not the worker's start-up."""
        deadline = time.monotonic() + timeout_s
        api = False
        while time.monotonic() < deadline:
            self.check_alive()
            if not api:
                try:
                    api = client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    pass
            if api and " ready." in self.tail("worker"):
                return
            time.sleep(0.25)
        raise SystemExit(
            f"API or worker not ready within {timeout_s:.0f} s\n"
            f"{self.tail('api')}\n{self.tail('worker')}"
        )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise SystemExit(
                    f"the {name} process exited with {proc.returncode}\n{self.tail(name)}"
                )

    def tail(self, name: str, chars: int = 4000) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class StageClock:
    """Client-side timestamps of every phase the job shows while polled: queued, then stages."""

    def __init__(self, created: float) -> None:
        self.created = created
        self.transitions: list[tuple[float, str]] = [(created, "queued")]
        self.polls = 0

    def see(self, job: dict[str, Any]) -> None:
        self.polls += 1
        phase = "queued" if job["status"] == "queued" else (job["stage"] or "preparing")
        if job["status"] in TERMINAL:
            phase = job["status"]
        if phase != self.transitions[-1][1]:
            self.transitions.append((time.perf_counter(), phase))

    def durations(self) -> list[dict[str, Any]]:
        out = []
        for (t0, name), (t1, _) in zip(self.transitions, self.transitions[1:], strict=False):
            out.append({"phase": name, "start_s": t0 - self.created, "wall_s": t1 - t0})
        return out


def poll(
    client: httpx.Client,
    services: Services,
    job_id: str,
    clock: StageClock,
    *,
    interval_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last_print = 0.0
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        clock.see(job)
        if job["status"] in TERMINAL:
            return job
        now = time.monotonic()
        if now - last_print >= 30:
            last_print = now
            p = job["progress"]
            log(f"  {job['status']} {job['stage']} step {p['step']}/{p['total_steps']}")
        if now > deadline:
            raise SystemExit(f"job {job_id} still {job['status']} after {timeout_s:.0f} s")
        services.check_alive()
        time.sleep(interval_s)


def read_events(client: httpx.Client, job_id: str) -> list[dict[str, Any]] | None:
    """Every event of the job, following the cursor; None where the API has no events route."""
    events: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"after": after} if after else {})}
        r = client.get(f"/v1/jobs/{job_id}/events", params=params)
        if r.status_code in (404, 405) and not events:
            return None
        page = r.raise_for_status().json()
        events += page["data"]
        if not page["has_more"]:
            return events
        after = page["next_cursor"]


BOUNDARIES = {"job_created": "queued", "job_started": "preparing", "job_requeued": "queued"}
ENDS = {"job_succeeded", "job_failed", "job_cancelled"}


def stages_from_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Wall time of each phase between the job's boundary events (server timestamps)."""
    marks: list[tuple[datetime, str]] = []
    for e in events:
        at = datetime.fromisoformat(e["created_at"])
        if e["type"] in BOUNDARIES:
            marks.append((at, BOUNDARIES[e["type"]]))
        elif e["type"] == "stage_started" and e["data"].get("stage"):
            marks.append((at, str(e["data"]["stage"])))
        elif e["type"] == "stage_finished" and e["data"].get("stage") == "export":
            marks.append((at, "store artifacts"))  # the worker zips and stores the export
        elif e["type"] in ENDS:
            marks.append((at, e["type"]))
    if not marks:
        return []
    t0 = marks[0][0]
    return [
        {"phase": name, "start_s": (a - t0).total_seconds(), "wall_s": (b - a).total_seconds()}
        for (a, name), (b, _) in zip(marks, marks[1:], strict=False)
    ]


def upload(client: httpx.Client, name: str, examples: list[Any]) -> dict[str, Any]:
    r = client.post(
        "/v1/datasets", files={"file": (name, to_jsonl(examples), "application/x-ndjson")}
    )
    if r.status_code != 201:
        raise SystemExit(f"upload of {name} failed: {r.status_code} {r.text}")
    return dict(r.json())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--train-limit",
        type=int,
        default=DEFAULT_TRAIN_LIMIT,
        help="training examples, stratified; 0 = all 10144",
    )
    p.add_argument("--dev-limit", type=int, default=0, help="validation examples; 0 = all")
    p.add_argument("--test-limit", type=int, default=0, help="test examples; 0 = all")
    p.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        help="epochs of every stage (hyperparameters.epochs); 0 = the engine recipe",
    )
    p.add_argument("--student", default="tinybert-4l-312d", choices=sorted(PRESETS))
    p.add_argument(
        "--student-select",
        choices=("importance", "first"),
        default=None,
        help="student.select for a sliced student; default: the service's",
    )
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--worker-threads",
        type=int,
        default=0,
        help="OMP/MKL threads of the worker process; 0 = torch's default (all cores)",
    )
    p.add_argument(
        "--database-url",
        help="e.g. postgresql+psycopg://user@host/db (migrated here); default: a fresh SQLite file",
    )
    p.add_argument(
        "--broker-url",
        help="e.g. redis://127.0.0.1:6379/0; default: sqla+sqlite in the temp folder",
    )
    p.add_argument(
        "--latency-jobs",
        type=int,
        default=0,
        help="before the main job, time POST -> running for this many jobs on the idle worker "
        "(each cancelled once running); issue 10 asks for 20",
    )
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait for the job")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (db, logs, storage)")
    p.add_argument("--data-dir", type=Path, default=DATASETS_DIR)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "e2e.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="distillery-e2e-"))
    queue = f"bench-e2e-{os.getpid()}"
    env = {
        **os.environ,
        "DISTILLERY_DATABASE_URL": a.database_url or f"sqlite:///{folder / 'distillery.db'}",
        "DISTILLERY_BROKER_URL": a.broker_url or f"sqla+sqlite:///{folder / 'broker.db'}",
        "DISTILLERY_STORAGE_DIR": str(folder / "storage"),
        "DISTILLERY_MODEL_DIR": str(folder / "models"),
        "DISTILLERY_QUEUE_NAME": queue,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if a.worker_threads:
        env.update(OMP_NUM_THREADS=str(a.worker_threads), MKL_NUM_THREADS=str(a.worker_threads))
    settings = {
        "dataset": DATASET,
        "teacher": TEACHER,
        "student": a.student,
        "student_select": a.student_select,
        "train_limit": a.train_limit or None,
        "dev_limit": a.dev_limit or None,
        "test_limit": a.test_limit or None,
        "epochs": a.epochs or None,
        "max_seq_length": a.max_seq_length,
        "batch_size": a.batch_size,
        "seed": a.seed,
        "worker_threads": a.worker_threads or None,
        "database": "sqlite" if not a.database_url else a.database_url.split(":", 1)[0],
        "broker": "sqla+sqlite" if not a.broker_url else a.broker_url.split(":", 1)[0],
        "poll_interval_s": a.poll_interval,
    }
    log(f"e2e benchmark: {settings}; temp folder {folder}")
    train = stratified_limit(
        read_split(DATASET, "train", a.data_dir), a.train_limit or None, seed=a.seed
    )
    dev = stratified_limit(read_split(DATASET, "dev", a.data_dir), a.dev_limit or None, seed=a.seed)
    test = stratified_limit(
        read_split(DATASET, "test", a.data_dir), a.test_limit or None, seed=a.seed
    )
    settings.update(train_examples=len(train), dev_examples=len(dev), test_examples=len(test))

    services = Services(env, folder, queue)
    result: dict[str, Any] = {
        "benchmark": "e2e",
        "settings": settings,
        "environment": environment(),
    }
    ok = False
    try:
        t = time.perf_counter()
        services.migrate()
        key = services.create_api_key()
        services.start()
        with httpx.Client(
            base_url=services.base_url, timeout=120.0, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            services.wait_ready(client)
            result["startup_s"] = time.perf_counter() - t
            ok = run_job(a, client, services, train, dev, test, settings, result, folder)
    finally:
        services.stop()
        result["wall_s"] = time.perf_counter() - started
        write_json(a.out, result)
        report(result)
        if not ok:
            for name in ("worker", "api"):
                print(f"\n--- {name} log (tail) ---\n{services.tail(name)}", file=sys.stderr)
        if a.keep or not ok:
            log(f"kept {folder} (db, storage, api.log, worker.log)")
        else:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


def run_job(
    a: argparse.Namespace,
    client: httpx.Client,
    services: Services,
    train: list[Any],
    dev: list[Any],
    test: list[Any],
    settings: dict[str, Any],
    result: dict[str, Any],
    folder: Path,
) -> bool:
    t = time.perf_counter()
    train_ds = upload(client, "train.jsonl", train)
    dev_ds = upload(client, "dev.jsonl", dev)
    result["upload_s"] = time.perf_counter() - t
    if a.latency_jobs:
        result["start_latency"] = start_latency(
            client, services, train_ds["id"], a.latency_jobs, max_seq_length=a.max_seq_length
        )
    hyper: dict[str, Any] = {"batch_size": a.batch_size, "max_seq_length": a.max_seq_length}
    if a.epochs:
        hyper["epochs"] = a.epochs
    body = {
        "teacher": TEACHER,
        "dataset": train_ds["id"],
        "validation_dataset": dev_ds["id"],
        "student": {"preset": a.student}
        | ({"select": a.student_select} if a.student_select else {}),
        "hyperparameters": hyper,
        "seed": a.seed,
    }
    created_at = time.perf_counter()
    r = client.post("/v1/jobs", json=body)
    if r.status_code != 201:
        raise SystemExit(f"POST /v1/jobs failed: {r.status_code} {r.text}")
    job_id = r.json()["id"]
    log(f"job {job_id} created; polling every {a.poll_interval} s")
    clock = StageClock(created_at)
    job = poll(client, services, job_id, clock, interval_s=a.poll_interval, timeout_s=a.timeout)
    result["job_s"] = time.perf_counter() - created_at
    result["stages"] = clock.durations()
    result["polls"] = clock.polls
    result["job"] = {
        k: job[k]
        for k in (
            "id",
            "status",
            "error",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
            "progress",
            "hyperparameters",
            "distillation",
            "student",
        )
    }
    result["metrics"] = job["metrics"]
    events = read_events(client, job_id)
    result["events_endpoint"] = events is not None
    if events is not None:
        result["events"] = events
        result["event_stages"] = stages_from_events(events)
    if job["status"] != "succeeded":
        log(f"job {job['status']}: {job['error']}")
        return False

    t = time.perf_counter()
    download = client.get(f"/v1/jobs/{job_id}/artifacts/student.zip").raise_for_status()
    student_dir = folder / "student"
    zipfile.ZipFile(io.BytesIO(download.content)).extractall(student_dir)
    result["download_s"] = time.perf_counter() - t
    result["student_zip_bytes"] = len(download.content)
    result["artifacts"] = [
        {k: x[k] for k in ("name", "size_bytes")}
        for x in client.get(f"/v1/jobs/{job_id}/artifacts").json()
    ]

    t = time.perf_counter()
    scored = score_folder(student_dir, test, max_length=a.max_seq_length)
    result["test_eval_s"] = time.perf_counter() - t
    result["student_test"] = {
        **scored["metrics"],
        "examples": scored["test_examples"],
        "parameters": scored["parameters"],
        "size_bytes": scored["size_bytes"],
    }
    return True


def start_latency(
    client: httpx.Client, services: Services, dataset: str, jobs: int, *, max_seq_length: int
) -> dict[str, Any]:
    """POST /v1/jobs -> `running`, one job at a time on the idle worker: the client's clock (a
    20 ms poll) and the server's (started_at - created_at). Each job is cancelled as soon as it
    runs, and the next is posted once the worker has let it go."""
    client_s: list[float] = []
    server_s: list[float] = []
    body = {
        "teacher": TEACHER,
        "dataset": dataset,
        "student": {"preset": "bert-2l-128d"},
        "hyperparameters": {"epochs": 1, "max_seq_length": max_seq_length},
    }
    for i in range(jobs):
        t = time.perf_counter()
        job = client.post("/v1/jobs", json=body).raise_for_status().json()
        while job["status"] == "queued":
            services.check_alive()
            time.sleep(0.02)
            job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
        client_s.append(time.perf_counter() - t)
        if job["started_at"]:
            started = datetime.fromisoformat(job["started_at"])
            server_s.append((started - datetime.fromisoformat(job["created_at"])).total_seconds())
        client.post(f"/v1/jobs/{job['id']}/cancel").raise_for_status()
        while job["status"] not in TERMINAL:
            time.sleep(0.05)
            job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
        log(f"  start latency {i + 1}/{jobs}: {client_s[-1]:.2f} s (client clock)")

    def summary(xs: list[float]) -> dict[str, float]:
        ordered = sorted(xs)
        return {
            "p50_s": statistics.median(ordered),
            "p90_s": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "max_s": ordered[-1],
        }

    return {
        "jobs": jobs,
        "client": summary(client_s),
        "server": summary(server_s) if server_s else None,
        "client_s": client_s,
        "server_s": server_s,
    }


def report(r: dict[str, Any]) -> None:
    s = r["settings"]
    polled = {x["phase"]: x["wall_s"] for x in r.get("stages") or []}
    evented = {x["phase"]: x["wall_s"] for x in r.get("event_stages") or []}
    rows: list[list[Any]] = [
        ["startup (migrate, key, API, worker)", None, r.get("startup_s")],
        ["upload train + dev", None, r.get("upload_s")],
    ]
    phases = list(evented) + [p for p in polled if p not in evented]
    rows += [[f"job: {p}", evented.get(p), polled.get(p)] for p in phases]
    rows += [
        ["download student.zip", None, r.get("download_s")],
        ["test evaluation (client)", None, r.get("test_eval_s")],
    ]
    table(
        "Wall time per phase, seconds (events: server clock; polling: client clock, "
        f"every {s['poll_interval_s']} s)",
        ["phase", "events", "polling"],
        rows,
    )
    if lat := r.get("start_latency"):
        server = lat["server"] or {}
        table(
            f"POST /v1/jobs -> running on an idle worker, {lat['jobs']} jobs, seconds",
            ["clock", "p50", "p90", "max"],
            [
                ["client (20 ms poll)", *(lat["client"][k] for k in ("p50_s", "p90_s", "max_s"))],
                [
                    "server (started_at - created_at)",
                    *(server.get(k) for k in ("p50_s", "p90_s", "max_s")),
                ],
            ],
        )

    m = r.get("metrics") or {}
    if m:
        lat, size, params = m.get("latency_ms", {}), m.get("size_bytes", {}), m["parameters"]
        rows = []
        for who in ("teacher", "student"):
            v = m.get(who, {})
            rows.append(
                [
                    who,
                    v.get("accuracy"),
                    v.get("macro_f1"),
                    params.get(who),
                    (size.get(who) or 0) / 1e6,
                    lat.get(who, {}).get("batch_1", {}).get("median"),
                    lat.get(who, {}).get("batch_32", {}).get("median"),
                ]
            )
        onnx = m.get("onnx") or {}
        for kind in ("fp32", "int8"):
            if kind in onnx:
                o = onnx[kind]
                rows.append(
                    [
                        f"student ONNX {kind}",
                        None,
                        None,
                        None,
                        o["size_bytes"] / 1e6,
                        o["latency_ms"]["batch_1"]["median"],
                        o["latency_ms"]["batch_32"]["median"],
                    ]
                )
        table(
            f"Job metrics (validation split; retention {m.get('retention')}; "
            "latency: engine's, on validation-length batches)",
            ["model", "val acc", "val macro-F1", "params", "size MB", "b1 ms", "b32 ms"],
            rows,
        )
    test = r.get("student_test")
    if test:
        table(
            "Downloaded student.zip on rt-polarity TEST",
            ["accuracy", "macro-F1", "MCC", "examples", "params", "size MB"],
            [
                [
                    test["accuracy"],
                    test["macro_f1"],
                    test["mcc"],
                    test["examples"],
                    test["parameters"],
                    test["size_bytes"] / 1e6,
                ]
            ],
        )
    print(f"\nsettings: {s}")
    if r.get("events_endpoint") is False:
        print("GET /v1/jobs/{id}/events does not exist here: stage times are from polling only")
    wall = r.get("wall_s", 0.0)
    print(
        f"total wall time: {fmt_seconds(wall)} ({wall:.0f} s); "
        f"job {fmt_seconds(r.get('job_s', 0.0))}"
    )


if __name__ == "__main__":
    sys.exit(main())
