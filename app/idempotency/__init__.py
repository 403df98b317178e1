"""Idempotency-Key on POST: the same key and body replay the first response; keys last 24 h.

models.py is the table, repository.py its SQL, service.py `begin` and `finish`; the header a
route declares is `app.deps.IdempotencyKeyHeader`. Nothing here imports FastAPI, so a worker
that loads every table does not load the web framework.
"""

from __future__ import annotations

from app.idempotency.models import IdempotencyKey
from app.idempotency.service import TTL, Replay, begin, finish, request_hash

__all__ = ["TTL", "IdempotencyKey", "Replay", "begin", "finish", "request_hash"]
