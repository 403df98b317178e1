"""A real API process for the load and download benches: a fresh Postgres database migrated by
Alembic, uvicorn as production starts it, an API key, a tenant with a dataset and a catalog
teacher. Everything is loopback-only and removed on exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from _common import DATASETS_DIR, ROOT

if str(ROOT) not in sys.path:  # the checkout's own app/, not whichever one is installed
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get(
    "DISTILLERY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("DISTILLERY_BENCH_REDIS", "redis://127.0.0.1:6379/14")
TENANT = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Setup:
    """What a bench needs to talk to the server it started."""

    base_url: str
    api_key: str
    env: dict[str, str]
    folder: Path
    api: subprocess.Popen[bytes]

    def client(self, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, **kwargs)


@contextmanager
def fresh_database(tag: str) -> Iterator[str]:
    """A new, empty Postgres database for this run; dropped (connections and all) at the end."""
    import psycopg

    name = f"distillery_bench_{tag}_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(argv: list[str], env: dict[str, str], what: str) -> str:
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _admin(env: dict[str, str], *args: str) -> str:
    return _run([sys.executable, "-m", "app.admin", *args], env, f"distillery-admin {args[:2]}")


def save_teacher(model_dir: Path) -> str:
    """A tiny BERT (tests/factories.py's builder) as a catalog teacher; its catalog name."""
    from tests.factories import read_jsonl, save_tiny_bert, tiny_vocab

    texts = [str(r["text"]) for r in read_jsonl(DATASETS_DIR / "tiny-sentiment" / "train.jsonl")]
    save_tiny_bert(model_dir / "tiny-bert", tiny_vocab(texts))
    return "tiny-bert"


def start_api(
    env: dict[str, str], folder: Path, *, workers: int
) -> tuple[str, subprocess.Popen[bytes]]:
    """uvicorn as the Dockerfile starts it (access log off as with --log-level warning)."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    argv += ["--workers", str(workers)]  # explicit: WEB_CONCURRENCY in the env would win
    with (folder / "api.log").open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"uvicorn exited with {proc.returncode}:\n{api_log(folder)}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return base_url, proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise SystemExit(f"the API was not ready within 60 s:\n{api_log(folder)}")


def api_log(folder: Path, chars: int = 4000) -> str:
    path = folder / "api.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_api(
    tag: str, *, workers: int = 1, teacher: bool = True, extra_env: dict[str, str] | None = None
) -> Iterator[Setup]:
    """Database, migrations, key, tiny catalog teacher (unless teacher=False) and the API
    process, torn down after."""
    folder = Path(tempfile.mkdtemp(prefix=f"distillery-bench-{tag}-"))
    queue = f"bench-{tag}-{os.getpid()}"
    with fresh_database(tag) as db_url:
        env = {
            **os.environ,
            "DISTILLERY_DATABASE_URL": db_url,
            "DISTILLERY_BROKER_URL": REDIS_URL,
            "DISTILLERY_QUEUE_NAME": queue,
            "DISTILLERY_WEBHOOK_QUEUE_NAME": f"{queue}-webhooks",
            "DISTILLERY_STORAGE_DIR": str(folder / "storage"),
            "DISTILLERY_MODEL_DIR": str(folder / "models"),
            "HF_HUB_OFFLINE": "1",
            **(extra_env or {}),
        }
        _run([sys.executable, "-m", "alembic", "upgrade", "head"], env, "alembic upgrade head")
        key = [x for x in _admin(env, "keys", "create", "--tenant", TENANT).split() if x][-1]
        # No active-job cap in the way: the bench creates thousands of queued jobs.
        _admin(env, "tenants", "set-limits", TENANT, "--max-active-jobs", "100000000")
        if teacher:
            save_teacher(folder / "models")
        base_url, proc = start_api(env, folder, workers=workers)
        try:
            yield Setup(base_url=base_url, api_key=key, env=env, folder=folder, api=proc)
        finally:
            stop(proc)
            _purge_queues(queue)
            subprocess.run(["rm", "-rf", str(folder)], check=False)


def _purge_queues(queue: str) -> None:
    """No worker consumes the bench's queue: drop what POST /v1/jobs put there."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.delete(queue, f"{queue}-webhooks")
    client.close()


def upload_dataset(client: httpx.Client) -> str:
    content = (DATASETS_DIR / "tiny-sentiment" / "train.jsonl").read_bytes()
    response = client.post("/v1/datasets", files={"file": ("train.jsonl", content)})
    if response.status_code != 201:
        raise SystemExit(f"dataset upload failed: {response.status_code} {response.text}")
    return str(response.json()["id"])


# Accepted without loading anything: only a worker would fetch it, and none runs here.
HUB_TEACHER = "google-bert/bert-base-uncased"


def job_body(dataset: str, teacher: str = "tiny-bert") -> dict[str, Any]:
    """A small, valid job: the tiny catalog teacher, a tiny student, no exports."""
    return {
        "teacher": teacher,
        "dataset": dataset,
        "student": {
            "preset": None,
            "num_layers": 2,
            "hidden_size": 16,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
        "hyperparameters": {"epochs": 1, "batch_size": 32, "max_seq_length": 32},
    }


def _cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _backends(database: str) -> list[int]:
    """Postgres backends serving `database` (a backend's title names its database)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
            if title.startswith("postgres: ") and f" {database} " in title:
                found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds spent by the API (the uvicorn process and its workers) and by the Postgres
    backends of the bench database: a per-request cost that holds up on a busy machine, where
    requests per second do not. Linux /proc only; zeros elsewhere."""

    def __init__(self, api_pid: int, database: str) -> None:
        self.api_pid, self.database = api_pid, database

    def read(self) -> tuple[float, float]:
        if not Path("/proc/self/stat").exists():
            return 0.0, 0.0
        api = sum(_cpu_s(p) for p in [self.api_pid, *_children(self.api_pid)])
        return api, sum(_cpu_s(p) for p in _backends(self.database))


def process_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes, from /proc (Linux)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out
