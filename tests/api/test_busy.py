"""When every request session is taken for longer than the pool timeout, a request answers
503 server_busy with Retry-After, never a 500 and never a wait on a thread."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app import deps
from app.config import Settings
from app.error_handlers import install_error_handlers
from app.errors import AppError


@pytest.mark.parametrize(
    "limits",
    [{"db_pool_size": 2}, {"api_db_sessions": 2, "db_pool_size": 10}],
    ids=["capped-by-the-pool", "api-db-sessions"],
)
def test_a_request_beyond_the_admitted_sessions_is_told_to_retry(
    monkeypatch: pytest.MonkeyPatch, limits: dict[str, int]
) -> None:
    settings = Settings(**limits, db_pool_timeout_seconds=0.05)
    monkeypatch.setattr(deps, "get_settings", lambda: settings)
    request_session = asynccontextmanager(deps.get_session)

    async def main() -> AppError:
        async with AsyncExitStack() as held:
            for _ in range(2):  # both admitted sessions stay open
                await held.enter_async_context(request_session())
            with pytest.raises(AppError) as refused:
                async with request_session():
                    pass
        async with request_session():
            pass  # released sessions admit the next request again
        return refused.value

    error = anyio.run(main)
    assert (error.code, error.status, error.headers) == ("server_busy", 503, {"Retry-After": "1"})


def test_a_pool_timeout_answers_503_server_busy() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/checkout")
    async def checkout() -> None:
        raise PoolTimeout("QueuePool limit of size 10 overflow 10 reached")

    response = TestClient(app).get("/checkout")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "server_busy"


def test_tenant_db_work_beyond_the_admitted_sessions_is_told_to_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(db_pool_size=1, db_pool_timeout_seconds=0.05)
    monkeypatch.setattr(deps, "get_settings", lambda: settings)
    request_session = asynccontextmanager(deps.get_session)

    def never_called(*_: object, **__: object) -> None:
        raise AssertionError("work ran without a free session")

    async def main() -> AppError:
        db = deps.TenantDb(deps.request_session, "Bearer dk_unused")
        async with request_session():  # the one admitted session stays open
            with pytest.raises(AppError) as refused:
                await db.read(never_called)
        return refused.value

    error = anyio.run(main)
    assert (error.code, error.status, error.headers) == ("server_busy", 503, {"Retry-After": "1"})
