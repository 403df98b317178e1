"""Idempotency-Key on POST: the same key and body replay the first response; keys last 24 h.

models.py is the table, repository.py its SQL, service.py `begin` and `finish`; the header a
route declares is `app.deps.IdempotencyKeyHeader`. Nothing here imports FastAPI, so a worker
that loads every table does not load the web framework.
"""

from __future__ import annotations

from typing import Any

from app.idempotency.models import IdempotencyKey
from app.idempotency.service import TTL, Replay, begin, finish, request_hash

__all__ = ["TTL", "IdempotencyKey", "Replay", "begin", "finish", "request_hash"]


def __getattr__(name: str) -> Any:
    # Transitional: the jobs routes still write `idempotency.KeyHeader`. Looked up only when
    # asked for, so importing the table stays free of FastAPI; goes once they use app.deps.
    if name == "KeyHeader":
        from app.deps import IdempotencyKeyHeader

        return IdempotencyKeyHeader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
