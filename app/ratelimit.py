"""Per-API-key rate limits: a moving window of `rate_limit_per_minute` requests.

The `limits` library keeps the window: in Redis when the deployment has one (every API
process then shares each key's count), in this process's memory for the embedded default.
Checked after the key is known to be valid, so unknown keys never fill the store. A store
that fails (Redis down) lets the request through: a rate limit is not worth an outage.
"""

from __future__ import annotations

import logging
import math
import time
from functools import lru_cache

from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.config import Settings, get_settings
from app.errors import AppError

log = logging.getLogger(__name__)


def storage_url(settings: Settings) -> str:
    """The setting, else Redis when the broker is Redis, else this process's memory."""
    if settings.rate_limit_storage_url:
        return settings.rate_limit_storage_url
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    return "memory://"


@lru_cache(maxsize=4)
def _limiter(url: str) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(storage_from_string(url))


def check_rate(key_hash: str) -> None:
    """Count one request of the key (by its SHA-256); 429 rate_limited with Retry-After past
    the limit."""
    settings = get_settings()
    limit = RateLimitItemPerMinute(settings.rate_limit_per_minute)
    limiter = _limiter(storage_url(settings))
    try:
        if limiter.hit(limit, "api-key", key_hash):
            return
        reset = limiter.get_window_stats(limit, "api-key", key_hash).reset_time
    except Exception:  # the store is unreachable: serve rather than refuse everyone
        log.warning("rate limit store unreachable; request let through", exc_info=True)
        return
    retry_after = max(1, math.ceil(reset - time.time()))
    raise AppError(
        "rate_limited",
        f"this API key made more than {settings.rate_limit_per_minute} requests in a minute; "
        f"retry after {retry_after} s",
        429,
        headers={"Retry-After": str(retry_after)},
    )
