"""Long responses (event streams, downloads): a per-tenant cap on how many are open at once.

The count is per API process (each process answers its own streams; WEB_CONCURRENCY
processes allow that many times the cap). A stream's slot is taken before its response
starts, so a refusal is a plain 429 in the envelope, and given back when the response ends
however it ends: finished, failed or the client gone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.config import get_settings
from app.errors import AppError

# The event loop is the only writer (no await between a check and its update): no lock.
_open: Counter[str] = Counter()


def open_streams(tenant_id: str) -> int:
    return _open[tenant_id]


def take_slot(tenant_id: str) -> Callable[[], None]:
    """A stream slot of the tenant's, or 429 too_many_streams; call the result to give it back."""
    cap = get_settings().max_streams_per_tenant
    if _open[tenant_id] >= cap:
        raise AppError(
            "too_many_streams",
            f"the tenant already has {cap} event streams or downloads open, its limit; "
            "close one or retry later",
            429,
            headers={"Retry-After": "5"},
        )
    _open[tenant_id] += 1
    given_back = False

    def give_back() -> None:
        nonlocal given_back
        if not given_back:
            given_back = True
            _open[tenant_id] -= 1
            if _open[tenant_id] <= 0:
                del _open[tenant_id]

    return give_back


class Slotted(Response):
    """`inner` as it is, holding a slot from `take_slot` until it ends, and giving it back."""

    def __init__(self, inner: Response, give_back: Callable[[], None]) -> None:
        # no super().__init__: nothing to render, `inner` answers
        self.give_back = give_back
        self.inner = inner
        self.status_code = inner.status_code

    @property
    def background(self) -> BackgroundTask | None:
        return self.inner.background

    @background.setter
    def background(self, value: BackgroundTask | None) -> None:
        self.inner.background = value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self.give_back()
