"""Caps on the request body, enforced before and while it is read: an upload's before the
multipart parser spools it to disk, every other body's (JSON) before it is parsed."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file


def carries_body(scope: Scope) -> bool:
    """Content-Length above 0, or chunked (no length said)."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


class BodyLimit:
    """Per-path caps on upload bodies (`limits`: path -> bytes) and one cap, `default`, on
    every other body. Content-Length is checked first, then the bytes actually received are
    counted, so a chunked body cannot slip past either."""

    def __init__(
        self, app: ASGIApp, limits: Callable[[], dict[str, int]], default: Callable[[], int]
    ) -> None:
        self.app = app
        self.limits = limits
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not carries_body(scope):
            await self.app(scope, receive, send)
            return
        upload_cap = self.limits().get(scope["path"].rstrip("/"))
        if upload_cap is not None and scope["method"] == "POST":
            cap, code, what, field = (
                upload_cap + MULTIPART_OVERHEAD,
                "file_too_large",
                "file",
                "file",
            )
        else:
            cap, code, what, field = self.default(), "body_too_large", "request body", None
        body = json.dumps(
            error_body(code, f"the {what} is larger than the {cap} byte limit", field)
        ).encode()
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            await self._refuse(send, body)
            return
        received = 0
        refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    # Answer now; the app sees a client that went away and stops reading.
                    refused = True
                    await self._refuse(send, body)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:  # the 413 is the one response; drop whatever the app says after
                await send(message)

        await self.app(scope, counting_receive, guarded_send)

    @staticmethod
    async def _refuse(send: Send, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
