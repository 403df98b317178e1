"""Start and stop real Celery worker processes for the end-to-end tests."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from app.config import get_settings

ROOT = Path(__file__).resolve().parents[1]


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child: writes past `limit` fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def start_worker(
    log: Path | None, *, name: str, max_file_bytes: int | None = None
) -> subprocess.Popen[bytes]:
    """A training worker that also takes the webhook queue, as one process. With
    max_file_bytes, every file it writes is capped there: a real, OS-level failing disk."""
    settings = get_settings()
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "-Q",
            f"{settings.queue_name},{settings.webhook_queue_name}",
            "--loglevel",
            "INFO",
            "--hostname",
            f"{name}-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=_file_size_limit(max_file_bytes) if max_file_bytes else None,
    )


def stop_worker(
    proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 120
) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
