"""Refuse an oversized upload before the multipart parser spools it to disk."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file


class BodyLimit:
    """Per-path caps on the request body: Content-Length is checked first, then the bytes
    actually received are counted, so a chunked upload cannot slip past either."""

    def __init__(self, app: ASGIApp, limits: Callable[[], dict[str, int]]) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        cap = self.limits().get(scope["path"].rstrip("/"))
        if cap is None:
            await self.app(scope, receive, send)
            return
        cap += MULTIPART_OVERHEAD
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            await self._refuse(send, cap)
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
                    await self._refuse(send, cap)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:  # the 413 is the one response; drop whatever the app says after
                await send(message)

        await self.app(scope, counting_receive, guarded_send)

    @staticmethod
    async def _refuse(send: Send, cap: int) -> None:
        body = json.dumps(
            error_body(
                "file_too_large", f"the request body is larger than the {cap} byte limit", "file"
            )
        ).encode()
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
