"""Liveness and readiness: unauthenticated, so an orchestrator can probe them."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from app.db import get_engine
from app.queue import broker_reachable

router = APIRouter(tags=["health"])
Check = Literal["ok", "unreachable"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, Check]


_NOT_READY: dict[str, Any] = {
    "model": Readiness,
    "description": "not_ready: the database or the broker is unreachable",
    "content": {
        "application/json": {
            "example": {
                "status": "not_ready",
                "checks": {"database": "ok", "broker": "unreachable"},
            }
        }
    },
}


# Liveness on the event loop: no thread and no database, so a busy pool never delays it.
@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: _NOT_READY})
def readyz() -> JSONResponse:
    checks: dict[str, Check] = {
        "database": "ok" if _database_reachable() else "unreachable",
        "broker": "ok" if broker_reachable() else "unreachable",
    }
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _database_reachable() -> bool:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
