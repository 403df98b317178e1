"""DistilleryError: the API's {"error": {...}} body, or a failure with no HTTP answer."""

from __future__ import annotations

from typing import Any

import httpx


class DistilleryError(Exception):
    """An API error from {"error": {code, message, field?, line?}}; status is None when no HTTP
    answer came back (connection failures, checksum mismatches)."""

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        field: str | None = None,
        line: int | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.line = line
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> DistilleryError:
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        try:
            error = response.json()["error"]
            return cls(
                status,
                str(error["code"]),
                str(error["message"]),
                error.get("field"),
                error.get("line"),
                retry_after=retry_after,
            )
        except (ValueError, KeyError, TypeError):
            # A proxy or load balancer answered, not the API.
            text = response.text.strip()[:200] or response.reason_phrase
            return cls(status, f"http_{status}", text, retry_after=retry_after)

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.status is not None:
            error["status"] = self.status
        if self.field is not None:
            error["field"] = self.field
        if self.line is not None:
            error["line"] = self.line
        return {"error": error}


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds; None for the HTTP-date form, which the backoff replaces."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
