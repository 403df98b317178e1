"""How an admin command ends on an AppError: the message on stderr, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from app.errors import AppError


@contextmanager
def reported() -> Iterator[None]:
    """Exit 2 for input the service refuses (422), 1 for anything else it refuses."""
    try:
        yield
    except AppError as exc:
        Console(stderr=True).print(f"[red]error[/] [bold]{exc.code}[/]: {exc.message}")
        raise typer.Exit(2 if exc.status == 422 else 1) from None
