"""Deliver a job's webhook, signed in the Standard Webhooks style, recording every attempt."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from app.config import Settings, get_settings
from app.db import session_factory
from app.jobs import repository
from app.jobs.service import to_public
from app.tables import Job, WebhookDelivery
from workers.webhook_http import post

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 6
EVENT_FOR_STATUS = {
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}


def backoff_seconds(attempt: int) -> int:
    """1 s, 4 s, 16 s, 64 s, 256 s between attempts."""
    return int(4 ** (attempt - 1))


def deliver(
    job_id: str, *, message_id: str, attempt: int, settings: Settings | None = None
) -> bool:
    """One attempt; True when the receiver answered 2xx (or there is nothing to send)."""
    settings = settings or get_settings()
    sessions = session_factory()
    with sessions() as s:
        job = s.get(Job, job_id)
        if job is None or not job.webhook_url or not job.webhook_secret:
            return True
        event_type = EVENT_FOR_STATUS.get(job.status)
        if event_type is None:
            log.warning("webhook for %s asked while it is %s", job_id, job.status)
            return True
        now = datetime.now(UTC)
        payload = json.dumps(
            {
                "type": event_type,
                "timestamp": now.isoformat(),
                "data": to_public(job).model_dump(mode="json"),
            }
        )
        url, secret, tenant_id = job.webhook_url, job.webhook_secret, job.tenant_id
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, payload),
    }
    outcome = post(url, content=payload.encode(), headers=headers, settings=settings)
    status_code, error = outcome.status_code, outcome.error
    ok = error is None
    with sessions.begin() as s:
        repository.add_delivery(
            s,
            WebhookDelivery(
                job_id=job_id,
                tenant_id=tenant_id,
                message_id=message_id,
                event_type=event_type,
                url=url,
                attempt=attempt,
                status_code=status_code,
                error=error,
                succeeded=ok,
            ),
        )
    return ok
