"""Row locks for reads that a concurrent write must not overtake."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from sqlalchemy import Select

# "share": the row may not be deleted or changed until this transaction ends (a new job naming
# a dataset); "update": nobody else may lock it either (deleting it). SQLite has no row locks
# and ignores both (the one-command default; production runs Postgres).
RowLock = Literal["share", "update"] | None

S = TypeVar("S", bound=Select[Any])


def locked(query: S, lock: RowLock) -> S:
    if lock is None:
        return query
    return query.with_for_update(read=lock == "share")
