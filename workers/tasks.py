"""Thin task wrappers: take ids, call the runner or the webhook sender."""

from __future__ import annotations

from celery import Task

from workers.celery_app import app


@app.task(name="distillery.run_job", bind=True)
def run_job(self: Task, job_id: str) -> None:
    from workers.runner import run_job as run  # torch loads in the worker process only

    run(job_id, worker=str(self.request.hostname or "worker"))


@app.task(name="distillery.deliver_webhook", bind=True, acks_late=True)
def deliver_webhook(self: Task, job_id: str, message_id: str, attempt: int = 1) -> None:
    from workers.webhooks import MAX_ATTEMPTS, backoff_seconds, deliver

    if not deliver(job_id, message_id=message_id, attempt=attempt) and attempt < MAX_ATTEMPTS:
        # A new message per attempt (not self.retry) so the attempt number travels with it.
        deliver_webhook.apply_async(args=[job_id, message_id, attempt + 1],
                                    countdown=backoff_seconds(attempt))
