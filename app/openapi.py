"""Documented error responses, so every route's OpenAPI entry lists its error codes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    line: int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


_EXAMPLES: dict[int, tuple[str, str, str | None]] = {
    401: ("unauthorized", "send 'Authorization: Bearer <API key>'", None),
    404: ("job_not_found", "no job 'job_…'", None),
    409: ("job_not_cancellable", "job 'job_…' already succeeded", None),
    410: ("artifact_missing", "artifact 'student.zip' is recorded but its file is gone", None),
    413: ("file_too_large", "the file is larger than the 209715200 byte limit", "file"),
    416: ("range_not_satisfiable", "the requested range is outside the file", None),
    422: (
        "invalid_request",
        "'hyperparameters.epochs': Input should be greater than or equal to 1",
        "hyperparameters.epochs",
    ),
    429: ("too_many_jobs", "the tenant already has 100 queued or running jobs, its limit", None),
    503: ("queue_unavailable", "the job queue is unreachable; the job was not started", None),
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Every authenticated route can also answer 401."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({401, *statuses}):
        code, message, field = _EXAMPLES[status]
        example = {
            "error": {"code": code, "message": message, **({"field": field} if field else {})}
        }
        out[status] = {
            "model": ErrorResponse,
            "description": code,
            "content": {"application/json": {"example": example}},
        }
    return out
