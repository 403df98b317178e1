"""`make run`: the API on 127.0.0.1:8000 plus supervised workers, on the embedded default."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import uvicorn

from app.config import get_settings

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


class Supervisor:
    """Keeps one worker process alive, as a process manager would in production."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="worker-supervisor", daemon=True).start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.proc = subprocess.Popen(self.command)
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
    settings = get_settings()
    for path in (settings.storage_dir, settings.model_dir):
        Path(path).mkdir(parents=True, exist_ok=True)
    supervisors = [
        # Training: one job at a time per process (one per GPU in production).
        Supervisor(
            worker_command(queue=settings.queue_name, pool="solo", concurrency=1, name="trainer")
        ),
        # Webhooks and the reaper: light and concurrent, so a long job never delays them.
        Supervisor(
            worker_command(
                queue=settings.webhook_queue_name,
                pool="threads",
                concurrency=4,
                name="webhooks",
                beat=True,
            )
        ),
    ]
    for supervisor in supervisors:
        supervisor.start()
    key_file = Path("var/local-api-key")
    key = local_api_key(key_file)
    print(
        "Distillery API on http://127.0.0.1:8000 (docs: /docs); "
        f"database {settings.database_url}\n"
        f"Local API key (tenant '{settings.default_tenant}', kept in {key_file}):\n  {key}\n"
        f"  export DISTILLERY_API_KEY={key}",
        flush=True,
    )
    try:
        # One process whatever WEB_CONCURRENCY says: SQLite takes one writer at a time.
        uvicorn.run("app.main:create_app", factory=True, host="127.0.0.1", port=8000, workers=1)
    finally:
        for supervisor in supervisors:
            supervisor.stop()


if __name__ == "__main__":
    main()
