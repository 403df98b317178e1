"""The Celery app: late acks, one message at a time, results ignored (the row is the truth)."""

from __future__ import annotations

from celery import Celery

from app.config import get_settings
from app.queue import RUN_JOB_TASK, WEBHOOK_TASK

REAP_TASK = "distillery.reap_stale_jobs"
RETENTION_TASK = "distillery.expire_artifacts"
settings = get_settings()

app = Celery("distillery", broker=settings.broker_url, include=["workers.tasks"])
# The reaper has a queue of its own, consumed by a light worker started with --beat (it needs
# no torch): slow webhook receivers never hold up crash recovery.
app.conf.update(
    task_acks_late=True,
    # A worker killed mid-job leaves the message unacked so another worker picks it up.
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    task_default_queue=settings.queue_name,
    task_routes={
        RUN_JOB_TASK: {"queue": settings.queue_name},
        WEBHOOK_TASK: {"queue": settings.webhook_queue_name},
        REAP_TASK: {"queue": settings.reaper_queue_name},
        RETENTION_TASK: {"queue": settings.reaper_queue_name},  # the reaper's: no torch
    },
    task_time_limit=settings.task_time_limit_seconds,
    broker_connection_retry_on_startup=True,
)
if settings.broker_url.startswith(("redis://", "rediss://")):
    # Redis redelivers an unacked message (its worker died) after this.
    app.conf.broker_transport_options = {
        "visibility_timeout": settings.broker_visibility_timeout_seconds
    }
app.conf.beat_schedule = {
    "reap-stale-jobs": {
        "task": REAP_TASK,
        "schedule": settings.reaper_interval_seconds,
        "options": {
            "queue": settings.reaper_queue_name,
            "expires": settings.reaper_interval_seconds,
        },
    },
    "expire-artifacts": {
        "task": RETENTION_TASK,
        "schedule": settings.retention_interval_seconds,
        "options": {
            "queue": settings.reaper_queue_name,
            "expires": settings.retention_interval_seconds,
        },
    },
}
