"""The JSON handlers: every failure, expected or not, answers with app.errors' one body."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import AppError, error_body, field_from_loc, server_busy

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


async def _app_error(_: Request, exc: AppError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.code, exc.message, exc.field, exc.line),
        status_code=exc.status,
        headers=exc.headers,
    )


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


async def _data(_: Request, exc: DataError) -> JSONResponse:
    # e.g. a NUL byte in an id: the database refuses it, the client gets a 422
    log.info("refused by the database: %s", exc.orig)
    return JSONResponse(
        error_body(
            "invalid_request",
            "a value in the request cannot be stored or looked up (for example a NUL character)",
        ),
        status_code=422,
    )


async def _pool_timeout(request: Request, exc: PoolTimeout) -> JSONResponse:
    # a connection outside the request gate (an event stream, /readyz) waited too long
    log.warning("database pool exhausted: %s", exc)
    return await _app_error(request, server_busy())


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


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(
        error_body("internal_error", "an internal error occurred; it has been logged"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.exception_handler(AppError)(_app_error)
    app.exception_handler(RequestValidationError)(_validation)
    app.exception_handler(DataError)(_data)
    app.exception_handler(PoolTimeout)(_pool_timeout)
    app.exception_handler(StarletteHTTPException)(_http)
    app.exception_handler(Exception)(_unexpected)
