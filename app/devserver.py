"""`make run`: the API on 127.0.0.1:8000 plus supervised workers, on the embedded default.

The workers end with the devserver however it ends: SIGTERM or Ctrl-C stop them (a signal
handler, because uvicorn re-raises the signal it caught as it exits, and the process dies
before a `finally` runs), and on Linux the kernel sends them SIGTERM when it dies any other way
(SIGKILL, a crash: PR_SET_PDEATHSIG). Once stopping, nothing is restarted.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from types import FrameType

import uvicorn

from app.config import Settings, get_settings

log = logging.getLogger("distillery.devserver")


def worker_command(
    *, queue: str, pool: str, concurrency: int, name: str, beat: bool = False
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "-Q",
        queue,
        "--loglevel",
        "INFO",
        "--hostname",
        f"{name}@{os.uname().nodename}",
    ]
    if beat:  # exactly one process runs the schedule (the stale-job reaper)
        command += ["--beat", "--schedule", str(Path("var/celerybeat-schedule").resolve())]
    return command


def worker_commands(settings: Settings) -> list[list[str]]:
    """The worker processes `make run` keeps alive, one per queue."""
    return [
        # Training: one job at a time per process (one per GPU in production).
        worker_command(queue=settings.queue_name, pool="solo", concurrency=1, name="trainer"),
        # Webhooks: light and concurrent, so a long job never delays them.
        worker_command(
            queue=settings.webhook_queue_name, pool="threads", concurrency=4, name="webhooks"
        ),
        # The reaper and the beat schedule that rings it: its own process and queue, so
        # receivers that take their time never delay crash recovery.
        worker_command(
            queue=settings.reaper_queue_name, pool="solo", concurrency=1, name="reaper", beat=True
        ),
    ]


class Supervisor:
    """Keeps one worker process alive, as a process manager would in production."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="worker-supervisor", daemon=True).start()

    def _loop(self) -> None:
        parent = os.getpid()
        while not self.stopping.is_set():
            self.proc = subprocess.Popen(self.command, preexec_fn=partial(_die_with, parent))
            code = self.proc.wait()
            if not self.stopping.is_set():
                log.warning("worker exited with %s; starting a new one", code)
                self.stopping.wait(1.0)  # back off so a crash loop doesn't spin

    def stop(self) -> None:
        self.stopping.set()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Looked up here, not in the child: between fork and exec the child should only make calls
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with(parent: int) -> None:
    """In the child, before exec: SIGTERM when the thread that started it ends (Linux)."""
    if _prctl is None:
        return
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the devserver died before the line above: nobody would tell
        os._exit(1)


def local_api_key(path: Path) -> str:
    """The quick start's key for the default tenant: made on first start, kept in ./var."""
    if path.is_file():
        return path.read_text().strip()
    from app.auth.service import create_key
    from app.db import session_factory

    with session_factory().begin() as session:
        _, plaintext = create_key(session, tenant_id=get_settings().default_tenant, name="make run")
    path.write_text(plaintext + "\n")
    path.chmod(0o600)
    return plaintext


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Local development posts webhooks to receivers on this machine (http, 127.0.0.1); the
    # workers inherit it. Production leaves it false: https to public addresses only.
    os.environ.setdefault("DISTILLERY_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true")
    get_settings.cache_clear()
    settings = get_settings()
    for path in (settings.storage_dir, settings.model_dir):
        Path(path).mkdir(parents=True, exist_ok=True)
    supervisors = [Supervisor(command) for command in worker_commands(settings)]

    def stop_all(signum: int, _frame: FrameType | None) -> None:
        for supervisor in supervisors:
            supervisor.stop()
        raise SystemExit(128 + signum)

    # uvicorn swaps in its own handlers while it serves and, as it exits, re-raises the signal
    # it caught against these: the workers stop before the devserver does
    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    for supervisor in supervisors:
        supervisor.start()
    key_file = Path("var/local-api-key")
    key = local_api_key(key_file)
    print(
        f"Distillery API on http://127.0.0.1:{settings.dev_port} (docs: /docs); "
        f"database {settings.database_url}\n"
        f"Local API key (tenant '{settings.default_tenant}', kept in {key_file}):\n  {key}\n"
        f"  export DISTILLERY_API_KEY={key}",
        flush=True,
    )
    try:
        # One process whatever WEB_CONCURRENCY says: SQLite takes one writer at a time.
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host="127.0.0.1",
            port=settings.dev_port,
            workers=1,
        )
    finally:
        for supervisor in supervisors:
            supervisor.stop()


if __name__ == "__main__":
    main()
