"""The engine and the session factory, with every table registered before the first query."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

import app.tables  # noqa: F401  (every table in the metadata before the first flush)
from app.base import UTCDateTime, utcnow  # noqa: F401  (the migrations name them app.db.*)
from app.config import get_settings


def make_engine(url: str) -> Engine:
    """SQLite for the embedded default; anything else with the pool sized by Settings."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets the API read while the worker writes progress.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    settings = get_settings()
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
    )


@lru_cache(maxsize=4)
def _engine_for(url: str) -> Engine:
    return make_engine(url)


def get_engine() -> Engine:
    return _engine_for(get_settings().database_url)


@lru_cache(maxsize=4)
def _sessions_for(engine: Engine) -> sessionmaker[Session]:
    # Built once: a sessionmaker makes a Session subclass, ~0.2 ms of CPU, too much per request.
    return sessionmaker(bind=engine, expire_on_commit=False)


def session_factory() -> sessionmaker[Session]:
    return _sessions_for(get_engine())
