"""Options that several commands share, and --all's walk through every page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel

from client.resources import Page

T = TypeVar("T", bound=BaseModel)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
LimitOpt = Annotated[int, typer.Option("--limit", min=1, max=100, help="Page size.")]
AfterOpt = Annotated[
    str | None,
    typer.Option("--after", help="next_cursor of the previous page.", show_default=False),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Follow next_cursor through every page.")]


def collect(pages: Iterator[Page[T]], all_pages: bool) -> Page[T]:
    """The first page, or with --all every page's data as one page."""
    first = next(pages)
    if not all_pages:
        return first
    data = list(first.data)
    for page in pages:
        data.extend(page.data)
    return first.model_copy(update={"data": data, "has_more": False, "next_cursor": None})
