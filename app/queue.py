"""Hand job ids to the workers by task *name*; the API never imports worker code."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from app.config import get_settings
from app.ids import new_id

RUN_JOB_TASK = "distillery.run_job"
WEBHOOK_TASK = "distillery.deliver_webhook"


@lru_cache(maxsize=4)
def _client(broker_url: str) -> Celery:
    return Celery("distillery-api", broker=broker_url, set_as_current=False)


def enqueue_job(job_id: str) -> None:
    """Call only after the job row is committed: the worker re-reads it by id."""
    settings = get_settings()
    _client(settings.broker_url).send_task(
        RUN_JOB_TASK,
        args=[job_id],
        queue=settings.queue_name,
        expires=settings.enqueue_expiry_seconds,
        ignore_result=True,
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
    )


def enqueue_webhook(job_id: str) -> None:
    """Queue the job's end-of-job webhook; the webhook-id stays the same across retries."""
    settings = get_settings()
    _client(settings.broker_url).send_task(
        WEBHOOK_TASK,
        args=[job_id, new_id("msg")],
        queue=settings.webhook_queue_name,
        ignore_result=True,
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
    )


def queued_message_count() -> int | None:
    """Messages waiting in the job queue, or None when the broker cannot say."""
    settings = get_settings()
    try:
        with _client(settings.broker_url).connection_for_read() as conn:
            _, count, _ = conn.default_channel.queue_declare(
                queue=settings.queue_name, passive=True
            )
            return int(count)
    except Exception as exc:  # a queue the broker forgot (a restart) has no messages
        return 0 if "not_found" in str(exc).lower() or "no queue" in str(exc).lower() else None


def broker_reachable() -> bool:
    settings = get_settings()
    try:
        with _client(settings.broker_url).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        return False
