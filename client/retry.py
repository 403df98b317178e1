"""What the client retries and how long it waits: tenacity with full-jitter backoff."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from client.errors import DistilleryError

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A 409 that only says "the first request with this key has not finished yet".
RETRY_CODES = frozenset({"idempotency_key_in_progress"})
MAX_RETRY_AFTER_S = 60.0

R = TypeVar("R")


def retryable(exc: BaseException) -> bool:
    """Connection errors, 429, 502-504 and an idempotency key still in progress; nothing else."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, DistilleryError) and (
        exc.status in RETRY_STATUSES or (exc.status == 409 and exc.code in RETRY_CODES)
    )


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delay(self, retry_number: int) -> float:
        """Full-jitter exponential backoff: uniform in [0, backoff * 2**n], capped."""
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** max(retry_number, 0)))

    def call(self, fn: Callable[[], R], base_url: str) -> R:
        """fn() until it succeeds or fails for good; transport errors become connection_failed."""
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(retryable),
            reraise=True,
            before_sleep=_log_retry,
        )
        try:
            return retrying(fn)
        except httpx.TransportError as exc:
            raise DistilleryError(
                None,
                "connection_failed",
                f"could not reach {base_url}: {exc or type(exc).__name__}",
            ) from exc

    def _wait(self, state: RetryCallState) -> float:
        delay = self.delay(state.attempt_number - 1)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, DistilleryError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER_S))
        return delay


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    log.info("attempt %d failed (%s); retrying", state.attempt_number, exc)
