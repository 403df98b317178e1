"""Shared request dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.config import get_settings


def current_tenant() -> str:
    """Everything belongs to the default tenant until API keys arrive."""
    return get_settings().default_tenant


TenantDep = Annotated[str, Depends(current_tenant)]
