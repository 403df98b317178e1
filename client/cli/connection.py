"""The global options and the client every command opens from them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import typer

from client.cli.output import console
from client.errors import DistilleryError
from client.http import DistilleryClient


@dataclass(frozen=True)
class Options:
    base_url: str
    api_key: str | None


ClientFactory = Callable[[str, str | None], DistilleryClient]


def default_client(base_url: str, api_key: str | None) -> DistilleryClient:
    return DistilleryClient(base_url, api_key=api_key)


# Tests point the CLI at an in-process server by replacing this.
client_factory: ClientFactory = default_client


@contextmanager
def connect(ctx: typer.Context, as_json: bool) -> Iterator[DistilleryClient]:
    """A client from the global options; an API error is printed (never a traceback) and
    exits 1."""
    options: Options = ctx.obj
    try:
        with client_factory(options.base_url, options.api_key) as client:
            yield client
    except DistilleryError as exc:
        if as_json:
            typer.echo(json.dumps(exc.to_dict()), err=True)
        else:
            where = "".join(
                f" ({name} {value})"
                for name, value in (("field", exc.field), ("line", exc.line))
                if value is not None
            )
            console(stderr=True).print(
                f"[red]error[/] [bold]{exc.code}[/]: {exc.message}{where}", highlight=False
            )
        raise typer.Exit(1) from None
