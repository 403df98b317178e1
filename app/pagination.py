"""Cursor pagination for every list: {object: "list", data, has_more, next_cursor}."""

from __future__ import annotations

from typing import Annotated, Generic, Literal, TypeVar

from fastapi import Query
from pydantic import BaseModel

T = TypeVar("T")

LimitQuery = Annotated[int, Query(ge=1, le=100, description="page size")]
AfterQuery = Annotated[
    str | None, Query(max_length=64, description="the next_cursor of the previous page")
]


class Page(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    next_cursor: str | None
