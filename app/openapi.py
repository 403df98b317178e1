"""Documented error responses: each route lists the codes it can answer, with an example each.

errors("dataset_not_found", "invalid_request")   # 401, 404 and 422, each with its example
errors((422, "teacher_not_found"))               # a code at another status than its usual
errors(404)                                      # a status's historical example (job_not_found)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    line: int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


@dataclass(frozen=True)
class ErrorExample:
    status: int  # the code's usual status; a route may answer it with another
    message: str
    field: str | None = None
    line: int | None = None


CATALOGUE: dict[str, ErrorExample] = {
    "unauthorized": ErrorExample(401, "send 'Authorization: Bearer <API key>'"),
    "dataset_not_found": ErrorExample(404, "no dataset 'ds_…'"),
    "model_not_found": ErrorExample(404, "no model 'mdl_…'"),
    "teacher_not_found": ErrorExample(404, "no uploaded model 'mdl_…'", "teacher"),
    "job_not_found": ErrorExample(404, "no job 'job_…'"),
    "artifact_not_found": ErrorExample(404, "job 'job_…' has no artifact 'student.zip'"),
    "job_not_cancellable": ErrorExample(409, "job 'job_…' already succeeded"),
    "job_active": ErrorExample(
        409,
        "job 'job_…' is running; cancel it first (POST /v1/jobs/job_…/cancel) and delete it "
        "once it has ended",
    ),
    "job_in_use": ErrorExample(
        409,
        "the checkpoint of job 'job_…' is used by queued or running job(s) job_…; cancel them "
        "or wait for them to end, then delete it",
    ),
    "dataset_in_use": ErrorExample(
        409,
        "dataset 'ds_…' is used by queued or running job(s) job_…; cancel them or wait for "
        "them to end, then delete it",
    ),
    "model_in_use": ErrorExample(
        409,
        "model 'mdl_…' is used by queued or running job(s) job_…; cancel them or wait for "
        "them to end, then delete it",
    ),
    "model_not_deletable": ErrorExample(
        409,
        "'all-MiniLM-L6-v2' is a catalog model, shared by every tenant; only uploaded models "
        "(mdl_…) can be deleted",
    ),
    "idempotency_key_reused": ErrorExample(
        409, "this Idempotency-Key was used with a different request", "Idempotency-Key"
    ),
    "idempotency_key_in_progress": ErrorExample(
        409,
        "a request with this Idempotency-Key is still in progress; retry shortly",
        "Idempotency-Key",
    ),
    "artifact_missing": ErrorExample(
        410, "artifact 'student.zip' is recorded but its file is gone from storage"
    ),
    "artifact_expired": ErrorExample(
        410,
        "the artifacts of job 'job_…' expired on 2026-12-01T00:00:00+00:00 under the tenant's "
        "retention",
    ),
    "file_too_large": ErrorExample(413, "the file is larger than the 209715200 byte limit", "file"),
    "body_too_large": ErrorExample(413, "the request body is larger than the 1048576 byte limit"),
    "storage_quota_exceeded": ErrorExample(
        413,
        "this upload (1048576 bytes as stored) would take the tenant's storage to 53687091201 "
        "bytes, over its 53687091200 byte quota; free space with DELETE /v1/datasets/{id}, "
        "DELETE /v1/models/{id} or DELETE /v1/jobs/{id}, or ask for a larger quota",
    ),
    "range_not_satisfiable": ErrorExample(
        416, "the requested range is outside the artifact's 1048576 bytes"
    ),
    "invalid_request": ErrorExample(
        422,
        "'hyperparameters.epochs': Input should be greater than or equal to 1",
        "hyperparameters.epochs",
    ),
    "file_empty": ErrorExample(422, "the uploaded file is empty", "file"),
    "dataset_invalid": ErrorExample(422, "line 7: 'label' is missing or empty", "label", 7),
    "model_invalid": ErrorExample(
        422, "pytorch_model.bin: only safetensors weights are accepted, never pickled files", "file"
    ),
    "dataset_incompatible": ErrorExample(
        422,
        "task 'classification' needs categorical labels; dataset 'ds_…' has numeric labels",
        "dataset",
    ),
    "checkpoint_not_found": ErrorExample(
        422, "job 'job_…' has saved no checkpoint", "init_from.job"
    ),
    "checkpoint_incompatible": ErrorExample(
        422, "job 'job_…' trained a student shaped (4, 312, 1200, 12)", "init_from.job"
    ),
    "webhook_url_forbidden": ErrorExample(
        422, "the URL names a private, loopback or link-local address", "webhook_url"
    ),
    "too_many_jobs": ErrorExample(
        429, "the tenant already has 100 queued or running jobs, its limit"
    ),
    "too_many_streams": ErrorExample(
        429, "the tenant already has 16 event streams or downloads open, its limit"
    ),
    "rate_limited": ErrorExample(
        429, "this API key made more than 6000 requests in a minute; retry after 12 s"
    ),
    "queue_unavailable": ErrorExample(503, "the job queue is unreachable; the job was not started"),
    "server_busy": ErrorExample(503, "the server is busy; retry after a second"),
}

# What a bare status documents: the examples every route showed before routes named codes.
_BY_STATUS = {
    401: "unauthorized",
    404: "job_not_found",
    409: "job_not_cancellable",
    410: "artifact_missing",
    413: "file_too_large",
    416: "range_not_satisfiable",
    422: "invalid_request",
    429: "too_many_jobs",
    503: "queue_unavailable",
}

Answer = str | int | tuple[int, str]


def errors(*answers: Answer) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` for these error answers, plus the 401 and the 429 rate_limited
    every authenticated route can give: a code from CATALOGUE, (status, code) for a code at
    another status, or a bare status for its historical example. Several codes at one status
    become named examples."""
    by_status: dict[int, list[str]] = {401: ["unauthorized"], 429: ["rate_limited"]}
    for answer in answers:
        status, code = _status_and_code(answer)
        codes = by_status.setdefault(status, [])
        if code not in codes:
            codes.append(code)
    return {status: _response(by_status[status]) for status in sorted(by_status)}


def _status_and_code(answer: Answer) -> tuple[int, str]:
    if isinstance(answer, tuple):
        return answer
    if isinstance(answer, int):
        return answer, _BY_STATUS[answer]
    return CATALOGUE[answer].status, answer


def _response(codes: Sequence[str]) -> dict[str, Any]:
    if len(codes) == 1:
        content: dict[str, Any] = {"example": _body(codes[0])}
    else:
        content = {"examples": {code: {"value": _body(code)} for code in codes}}
    return {
        "model": ErrorResponse,
        "description": ", ".join(codes),
        "content": {"application/json": content},
    }


def _body(code: str) -> dict[str, Any]:
    example = CATALOGUE[code]
    error: dict[str, Any] = {"code": code, "message": example.message}
    if example.field is not None:
        error["field"] = example.field
    if example.line is not None:
        error["line"] = example.line
    return {"error": error}
