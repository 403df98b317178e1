"""AppError and the JSON handlers: every failure is {"error": {"code", "message", "field"?}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class AppError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        status: int = 400,
        *,
        field: str | None = None,
        line: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.headers = headers
        self.code = code
        self.message = message
        self.status = status
        self.field = field
        self.line = line


def error_body(
    code: str, message: str, field: str | None = None, line: int | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    if line is not None:
        error["line"] = line
    return {"error": error}


def field_from_loc(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'hyperparameters', 'epochs') -> 'hyperparameters.epochs'."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, exc.field, exc.line),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = field_from_loc(first.get("loc", ()))
        kind = first.get("type", "")
        if kind == "extra_forbidden":
            message = f"unknown field '{field}'"
        elif kind == "missing":
            message = f"'{field}' is required"
        else:
            message = f"'{field}': {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body("invalid_request", message, field or None), status_code=422)

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        # e.g. a NUL byte in an id: the database refuses it, the client gets a 422
        log.info("refused by the database: %s", exc.orig)
        return JSONResponse(
            error_body(
                "invalid_request",
                "a value in the request cannot be "
                "stored or looked up (for example a NUL character)",
            ),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # an unparsable body (bad JSON bytes, broken multipart)
            return JSONResponse(
                error_body(
                    "invalid_request", f"the request body cannot be parsed: {exc.detail}", "body"
                ),
                status_code=422,
            )
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body("internal_error", "an internal error occurred; it has been logged"),
            status_code=500,
        )
