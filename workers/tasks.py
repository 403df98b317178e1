"""Thin task wrappers: take ids, call the runner, the webhook sender or the reaper."""

from __future__ import annotations

import threading
from typing import Any

from celery import Task, signals

from app.queue import RUN_JOB_TASK, WEBHOOK_TASK
from workers.celery_app import REAP_TASK, app

# Celery's decorators are untyped: each task below carries one narrow ignore for that.

# Set on SIGTERM (Celery's warm shutdown): the running job checkpoints and is handed back.
_shutting_down = threading.Event()


@signals.worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _on_shutdown(**_: Any) -> None:
    _shutting_down.set()


@app.task(name=RUN_JOB_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
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


@app.task(name=WEBHOOK_TASK, bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def deliver_webhook(self: Task, job_id: str, message_id: str, attempt: int = 1) -> None:
    from workers.webhooks import MAX_ATTEMPTS, backoff_seconds, deliver

    if not deliver(job_id, message_id=message_id, attempt=attempt) and attempt < MAX_ATTEMPTS:
        # A new message per attempt (not self.retry) so the attempt number travels with it.
        deliver_webhook.apply_async(
            args=[job_id, message_id, attempt + 1], countdown=backoff_seconds(attempt)
        )


@app.task(name=REAP_TASK)  # type: ignore[untyped-decorator]
def reap_stale_jobs() -> list[str]:
    from workers.reaper import reap_stale_jobs as reap

    return reap()
