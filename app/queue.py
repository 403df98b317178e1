"""The after-commit outbox: messages to the workers, by task *name*, only once the transaction
that asked for them has committed (the API never imports worker code).

A transaction `defer`s a message; a session hook sends it after the outermost commit and drops
it on rollback, so a worker never reads a row that is not there yet, and a rolled-back change
never rings the doorbell. A message the broker refuses is logged and kept on the session for
the caller that must answer for it (`unsent`); the job row stays the truth, and the reaper
re-sends queued jobs whose message was lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from app.config import get_settings
from app.ids import new_id

log = logging.getLogger(__name__)

RUN_JOB_TASK = "distillery.run_job"
WEBHOOK_TASK = "distillery.deliver_webhook"
_PENDING = "distillery.outbox.pending"
_UNSENT = "distillery.outbox.unsent"
# A short burst of retries: an API request waits on these when the broker is down.
_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}


@dataclass(frozen=True)
class Message:
    task: str  # RUN_JOB_TASK or WEBHOOK_TASK
    job_id: str
    message_id: str | None = None  # WEBHOOK_TASK: the pending delivery's webhook-id


@lru_cache(maxsize=4)
def _client(broker_url: str) -> Celery:
    return Celery("distillery-api", broker=broker_url, set_as_current=False)


def enqueue_job(job_id: str) -> None:
    """Send now. Call with no transaction open (the outbox does): the worker re-reads the row."""
    settings = get_settings()
    _client(settings.broker_url).send_task(
        RUN_JOB_TASK,
        args=[job_id],
        queue=settings.queue_name,
        expires=settings.enqueue_expiry_seconds,
        ignore_result=True,
        retry=True,
        retry_policy=_RETRY_POLICY,
    )


def enqueue_webhook(
    job_id: str, message_id: str, *, attempt: int = 1, countdown: float | None = None
) -> None:
    """Ring the doorbell for a pending webhook delivery (its row says what to send); a lost
    message only delays it: the reaper sends pending deliveries that are overdue."""
    settings = get_settings()
    _client(settings.broker_url).send_task(
        WEBHOOK_TASK,
        args=[job_id, message_id, attempt],
        queue=settings.webhook_queue_name,
        countdown=countdown,
        expires=settings.enqueue_expiry_seconds,
        ignore_result=True,
        retry=True,
        retry_policy=_RETRY_POLICY,
    )


def _send(message: Message) -> None:
    if message.task == WEBHOOK_TASK:
        enqueue_webhook(message.job_id, message.message_id or new_id("msg"))
    else:
        enqueue_job(message.job_id)


def defer(session: Session, message: Message) -> None:
    """Send `message` once this session's transaction commits; forget it if it rolls back."""
    session.info.setdefault(_PENDING, []).append(message)


def unsent(session: Session) -> list[Message]:
    """The messages the broker refused after this session's last commits (and forget them)."""
    refused: list[Message] = session.info.pop(_UNSENT, [])
    return refused


@event.listens_for(Session, "after_commit")
def _send_after_commit(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: the work is not durable yet
        return
    for message in session.info.pop(_PENDING, []):
        try:
            _send(message)
        except Exception:
            log.exception("could not send %s for %s", message.task, message.job_id)
            session.info.setdefault(_UNSENT, []).append(message)


@event.listens_for(Session, "after_transaction_end")
def _drop_after_rollback(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost: after a commit the list is already sent
        session.info.pop(_PENDING, None)


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
