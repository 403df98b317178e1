"""AppError and the one error body: {"error": {"code", "message", "field"?, "line"?}}.

Free of FastAPI, so services and workers raise it without loading the web framework; the
handlers that turn it into a response are in app/error_handlers.py.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """A failure a caller may see: a stable code, a message, the HTTP status it answers."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 400,
        *,
        field: str | None = None,
        line: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers
        self.code = code
        self.message = message
        self.status = status
        self.field = field
        self.line = line


def server_busy() -> AppError:
    """Every database connection is in use for longer than the pool timeout: shed load."""
    return AppError(
        "server_busy",
        "the server is busy; retry after a second",
        503,
        headers={"Retry-After": "1"},
    )


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
