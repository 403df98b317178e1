"""The pool checks a connection on checkout without a round trip: one the server closed is
replaced, never handed to a request."""

from __future__ import annotations

import math
import time

import psycopg
from sqlalchemy import text

from app.config import get_settings
from app.db import _json_loads, make_engine
from tests.conftest import PG_ADMIN_URL


def _backend_pid(engine: object) -> int:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_the_server_closed_is_replaced_on_checkout(database: str) -> None:
    engine = make_engine(get_settings().database_url)  # a pool of its own
    try:
        first = _backend_pid(engine)
        assert _backend_pid(engine) == first  # pooled: the same connection again
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone() == (True,)
            deadline = time.monotonic() + 30
            while admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (first,)
            ).fetchone():
                assert time.monotonic() < deadline, "the backend did not exit"
        # Without the checkout check this raises OperationalError (the server closed it).
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()


def test_json_columns_read_what_json_dumps_writes() -> None:
    assert _json_loads('{"a": [1, 2.5, "x", null]}') == {"a": [1, 2.5, "x", None]}
    assert math.isnan(_json_loads('{"loss": NaN}')["loss"])  # json.dumps writes NaN; orjson refuses
