"""Deliver a job's webhook, signed in the Standard Webhooks style, at least once.

Each attempt is a webhook_deliveries row: recorded `pending` with the job's end (the first) or
by the attempt before (a retry, due after its backoff), taken by one worker (`sending`, a
compare-and-set), then `succeeded` or `failed`. A message is only the doorbell: `sweep`, run by
the reaper, sends what is overdue, so a broker outage or a worker killed between the commit and
the send delays a webhook but never loses it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from app.base import utcnow
from app.config import Settings, get_settings
from app.db import session_factory
from app.jobs import repository
from app.jobs.service import to_public
from app.tables import Job, WebhookDelivery
from workers.webhook_http import post

log = logging.getLogger(__name__)


def backoff_seconds(attempt: int) -> int:
    """1 s, 4 s, 16 s, 64 s, 256 s between attempts."""
    return int(4 ** (attempt - 1))


@dataclass(frozen=True)
class Retry:
    """The next attempt, recorded pending; its message should ring after `delay` seconds."""

    job_id: str
    message_id: str
    attempt: int
    delay: int


def deliver(
    job_id: str, *, message_id: str, attempt: int, settings: Settings | None = None
) -> Retry | None:
    """The attempt a message names, unless another worker (or an earlier message) took it."""
    settings = settings or get_settings()
    sessions = session_factory()
    with sessions() as s:
        row = repository.delivery(s, message_id=message_id, attempt=attempt)
        delivery_id = row.id if row is not None else None
    if delivery_id is None:
        log.warning("no webhook delivery %s/%s for %s; dropping", message_id, attempt, job_id)
        return None
    return attempt_delivery(sessions, delivery_id, settings)


def sweep(settings: Settings | None = None) -> list[Retry | None]:
    """Send the pending deliveries whose message is overdue (and those a worker took and went
    silent on), a bounded batch, one after another: each ends within the delivery timeout."""
    settings = settings or get_settings()
    sessions = session_factory()
    now = utcnow()
    with sessions() as s:
        overdue = repository.overdue_deliveries(
            s,
            due_before=now - timedelta(seconds=settings.webhook_resend_after_seconds),
            claimed_before=now - _silent_after(settings),
            limit=settings.webhook_sweep_batch,
        )
    if overdue:
        log.warning("webhook sweep: sending %d overdue deliveries", len(overdue))
    return [attempt_delivery(sessions, delivery_id, settings) for delivery_id in overdue]


def _silent_after(settings: Settings) -> timedelta:
    """A `sending` row older than this lost its worker: no attempt outlives the timeout."""
    return timedelta(
        seconds=settings.webhook_timeout_seconds + settings.webhook_resend_after_seconds
    )


def attempt_delivery(
    sessions: sessionmaker[Session], delivery_id: int, settings: Settings
) -> Retry | None:
    """One attempt; the next one (recorded pending) when this one failed and attempts remain."""
    with sessions.begin() as s:
        if not repository.claim_delivery(
            s, delivery_id, stale_before=utcnow() - _silent_after(settings)
        ):
            return None  # another worker has it, or it already ended
        row = s.get(WebhookDelivery, delivery_id)
        job = s.get(Job, row.job_id) if row is not None else None
        if row is None or job is None:
            return None
        now = datetime.now(UTC)
        payload = json.dumps(
            {
                "type": row.event_type,
                "timestamp": now.isoformat(),
                "data": to_public(job).model_dump(mode="json"),
            }
        )
        secret = job.webhook_secret
        pending = WebhookDelivery(
            job_id=row.job_id,
            tenant_id=row.tenant_id,
            message_id=row.message_id,
            event_type=row.event_type,
            url=row.url,
            attempt=row.attempt + 1,
            state="pending",
            due_at=utcnow() + timedelta(seconds=backoff_seconds(row.attempt)),
            succeeded=False,
        )
    status_code: int | None = None
    error: str | None = "the job has no webhook secret"
    if secret:
        headers = {
            "content-type": "application/json",
            "webhook-id": pending.message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(pending.message_id, now, payload),
        }
        outcome = post(pending.url, content=payload.encode(), headers=headers, settings=settings)
        status_code, error = outcome.status_code, outcome.error
    retry = error is not None and pending.attempt <= settings.webhook_max_attempts
    with sessions.begin() as s:
        repository.finish_delivery(s, delivery_id, status_code=status_code, error=error)
        if retry:  # in the same transaction: a failed attempt always leaves its successor
            repository.add_delivery(s, pending)
    if not retry:
        return None
    return Retry(
        pending.job_id, pending.message_id, pending.attempt, backoff_seconds(pending.attempt - 1)
    )
