"""The `distillery` CLI (typer + rich) over DistilleryClient; `python -m client.cli` runs it."""

from __future__ import annotations

from client.cli.main import app, main

__all__ = ["app", "main"]
