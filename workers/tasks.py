"""Thin task wrappers: take ids, call the runner, the webhook sender or the reaper."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import Task, signals

from app.config import get_settings
from app.queue import RUN_JOB_TASK, WEBHOOK_TASK
from workers.celery_app import REAP_TASK, RETENTION_TASK, app

if TYPE_CHECKING:
    from workers.webhooks import Retry

# Celery's decorators are untyped: each task below carries one narrow ignore for that.

log = logging.getLogger(__name__)

# Set on SIGTERM (Celery's warm shutdown): the running job checkpoints and is handed back.
_shutting_down = threading.Event()


@signals.worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _on_shutdown(**_: Any) -> None:
    _shutting_down.set()


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _check_settings(**_: Any) -> None:
    """Refuse to start with an outage tolerance that lets a job run on two workers."""
    from workers.progress import check_timings

    check_timings(get_settings())


@signals.celeryd_after_setup.connect  # type: ignore[untyped-decorator]
def _preload_engine(sender: str, instance: Any, **_: Any) -> None:
    """A training worker imports torch and the engine as it starts, not on its first job
    (about 5 s here): POST -> running stays short for the first job too. The webhook worker
    stays light. Forked pool children inherit the imports."""
    chosen = instance.app.amqp.queues.consume_from  # None: every queue, the training one too
    if chosen is None or get_settings().queue_name in chosen:
        import workers.runner  # noqa: F401

        log.info("engine preloaded for queue %s", get_settings().queue_name)


@app.task(name=RUN_JOB_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
def run_job(self: Task, job_id: str) -> None:
    from workers.runner import run_job as run  # preloaded in a training worker

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
    from workers.webhooks import deliver

    ring(deliver(job_id, message_id=message_id, attempt=attempt))


def ring(retry: Retry | None) -> None:
    """The doorbell for a retry, recorded pending already: a refused send is only logged,
    the reaper's sweep sends it once it is overdue."""
    if retry is None:
        return
    try:
        # A new message per attempt (not self.retry) so the attempt number travels with it.
        deliver_webhook.apply_async(
            args=[retry.job_id, retry.message_id, retry.attempt], countdown=retry.delay
        )
    except Exception:
        log.exception("could not queue webhook retry %s/%s", retry.message_id, retry.attempt)


@app.task(name=REAP_TASK)  # type: ignore[untyped-decorator]
def reap_stale_jobs() -> list[str]:
    from workers.reaper import reap_stale_jobs as reap
    from workers.webhooks import sweep

    acted_on = reap()  # crash recovery first: the sweep may wait on receivers
    for retry in sweep():
        ring(retry)
    return acted_on


@app.task(name=RETENTION_TASK)  # type: ignore[untyped-decorator]
def expire_artifacts() -> list[str]:
    from workers.retention import sweep as expire

    return expire()
