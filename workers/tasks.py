"""Thin task wrappers: take ids, call the runner, the webhook sender or the reaper."""

from __future__ import annotations

import threading
from typing import Any

from celery import Task, signals

from workers.celery_app import app

# Set on SIGTERM (Celery's warm shutdown): the running job checkpoints and is handed back.
_shutting_down = threading.Event()


@signals.worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    _shutting_down.set()


@app.task(name="distillery.run_job", bind=True, max_retries=None)
def run_job(self: Task, job_id: str) -> None:
    from app.config import get_settings
    from workers.runner import run_job as run  # torch loads in the worker process only

    outcome = run(
        job_id,
        worker=str(self.request.hostname or "worker"),
        shutdown_requested=_shutting_down.is_set,
    )
    if outcome == "watch":
        # Another worker holds the job. Look again once its heartbeat could have gone
        # stale: if that worker died, this message is what resumes the job.
        raise self.retry(countdown=get_settings().heartbeat_stale_seconds)


@app.task(name="distillery.deliver_webhook", bind=True, acks_late=True)
def deliver_webhook(self: Task, job_id: str, message_id: str, attempt: int = 1) -> None:
    from workers.webhooks import MAX_ATTEMPTS, backoff_seconds, deliver

    if not deliver(job_id, message_id=message_id, attempt=attempt) and attempt < MAX_ATTEMPTS:
        # A new message per attempt (not self.retry) so the attempt number travels with it.
        deliver_webhook.apply_async(
            args=[job_id, message_id, attempt + 1], countdown=backoff_seconds(attempt)
        )


@app.task(name="distillery.reap_stale_jobs")
def reap_stale_jobs() -> list[str]:
    from workers.recovery import reap_stale_jobs as reap

    return reap()
