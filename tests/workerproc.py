"""Start and stop real Celery worker processes for the end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from app.config import get_settings

ROOT = Path(__file__).resolve().parents[1]


def start_worker(log: Path, *, name: str) -> subprocess.Popen[bytes]:
    """A training worker that also takes the webhook queue, as one process."""
    settings = get_settings()
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
         "--pool", "solo", "--concurrency", "1",
         "-Q", f"{settings.queue_name},{settings.webhook_queue_name}",
         "--loglevel", "INFO", "--hostname", f"{name}-{os.getpid()}@%h",
         "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=os.environ.copy(), stdout=out, stderr=subprocess.STDOUT)


def stop_worker(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM,
                timeout: float = 120) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
