"""Deliver a job's webhook, signed in the Standard Webhooks style, recording every attempt."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from app.db import session_factory
from app.jobs import repository
from app.jobs.service import to_public
from app.tables import Job, WebhookDelivery

log = logging.getLogger(__name__)
TIMEOUT_S = 10.0
MAX_ATTEMPTS = 6
EVENT_FOR_STATUS = {
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}


def backoff_seconds(attempt: int) -> int:
    """1 s, 4 s, 16 s, 64 s, 256 s between attempts."""
    return int(4 ** (attempt - 1))


def deliver(job_id: str, *, message_id: str, attempt: int) -> bool:
    """One attempt; True when the receiver answered 2xx (or there is nothing to send)."""
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
    status_code: int | None = None
    error: str | None = None
    try:
        response = httpx.post(
            url, content=payload, headers=headers, timeout=TIMEOUT_S, follow_redirects=False
        )
        status_code = response.status_code
        if not response.is_success:
            error = f"the receiver answered {status_code}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
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
