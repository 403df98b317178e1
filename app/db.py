"""The engine and the session factory, with every table registered before the first query."""

from __future__ import annotations

import json
import select
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
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
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        json_deserializer=_json_loads,
    )
    # Instead of pool_pre_ping's SELECT 1 on every checkout (a round trip per request, ~10%
    # of a job read's CPU): ask the socket. A connection the server closed (a restart, an
    # idle timeout) has its error and EOF waiting to be read; only then is it pinged, and
    # replaced when the ping fails (the pool retries the checkout with a new connection).
    event.listen(engine, "checkout", _checkout_alive)
    return engine


def _json_loads(text: str | bytes) -> Any:
    """orjson: JSON columns (a job's config and metrics) decode several times faster than with
    json.loads, the largest cost of a job list. json.loads reads what orjson refuses (NaN)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _checkout_alive(dbapi_conn: Any, record: Any, proxy: Any) -> None:
    if not _alive(dbapi_conn):
        raise DisconnectionError("the database closed this connection")


def _alive(dbapi_conn: Any) -> bool:
    if dbapi_conn.closed or getattr(dbapi_conn, "broken", False):
        return False
    readable, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
    if not readable:  # nothing arrived while it sat in the pool: no error, no EOF
        return True
    try:
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            if not dbapi_conn.autocommit:
                dbapi_conn.rollback()
    except Exception:
        return False
    return True


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


@lru_cache(maxsize=4)
def _read_sessions_for(engine: Engine) -> sessionmaker[Session]:
    # Each statement its own transaction: a read of one or two SELECTs skips the BEGIN and
    # COMMIT round trips (psycopg sends BEGIN as a command of its own).
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(bind=autocommit, expire_on_commit=False)


def read_session_factory() -> sessionmaker[Session]:
    """Sessions for work that writes nothing; each statement sees the latest commits."""
    return _read_sessions_for(get_engine())
