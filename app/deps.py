"""Shared request dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header

from app.auth.service import authenticate
from app.db import SessionDep


def current_tenant(
    session: SessionDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> str:
    """The tenant that owns the presented API key; 401 without a valid one."""
    return authenticate(session, authorization)


TenantDep = Annotated[str, Depends(current_tenant)]
