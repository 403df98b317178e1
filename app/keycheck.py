"""The API key, checked before a byte of the request body is read.

FastAPI reads and parses a route's body (JSON or multipart) before it resolves any
dependency, so a key checked in a dependency came too late: an unknown key with a 64 MiB
body had it read and parsed before the 401 (issue 12). This middleware runs first.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.bodylimit import carries_body
from app.deps import TENANT_STATE, authenticate_first
from app.errors import AppError, error_body

AUTHENTICATED_PREFIX = "/v1/"


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def refuse(scope: Scope, receive: Receive, send: Send, exc: AppError) -> None:
    """The error envelope, sent without reading the body (the server then closes the
    connection rather than drain what the client still sends)."""
    response = JSONResponse(
        error_body(exc.code, exc.message, exc.field, exc.line),
        status_code=exc.status,
        headers=exc.headers,
    )
    await response(scope, receive, send)


class KeyFirst:
    """A request to /v1/ that carries a body gets its key looked up (one query) before the
    body is read; the tenant found goes to request.state, so the route does not look it up
    again. A request without a body has nothing to read: its key is looked up in the
    route's own thread hop, as before (issue 10 took a read down to that one hop).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(AUTHENTICATED_PREFIX)
            or not carries_body(scope)
        ):
            await self.app(scope, receive, send)
            return
        try:
            tenant = await authenticate_first(scope["app"], header(scope, b"authorization"))
        except AppError as exc:
            await refuse(scope, receive, send, exc)
            return
        scope.setdefault("state", {})[TENANT_STATE] = tenant
        await self.app(scope, receive, send)
