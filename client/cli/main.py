"""The `distillery` console script: datasets, models and jobs over the HTTP API.

Operator commands that need the database (API keys, tenant limits) live server-side, in
`distillery-admin` (app/admin): this CLI never imports the server.
"""

from __future__ import annotations

from typing import Annotated

import typer

from client.cli import datasets, jobs, models
from client.cli.connection import Options
from client.http import DEFAULT_BASE_URL

app = typer.Typer(
    name="distillery",
    no_args_is_help=True,
    help="Distillation as a service: upload data and teachers, run and watch "
    "jobs, download students.",
)
app.add_typer(datasets.app, name="datasets")
app.add_typer(models.app, name="models")
app.add_typer(jobs.app, name="jobs")


@app.callback()
def _root(
    ctx: typer.Context,
    base_url: Annotated[
        str, typer.Option("--base-url", envvar="DISTILLERY_URL", help="The API's address.")
    ] = DEFAULT_BASE_URL,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="DISTILLERY_API_KEY",
            show_default=False,
            help="Sent as 'Authorization: Bearer <key>'.",
        ),
    ] = None,
) -> None:
    ctx.obj = Options(base_url=base_url, api_key=api_key)


@app.command(
    "keys",
    hidden=True,
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def _moved_keys(ctx: typer.Context) -> None:
    """`distillery keys` before the admin CLI existed: say where it went."""
    args = " ".join(["keys", *ctx.args])
    typer.echo(f"operator commands moved: run `distillery-admin {args}` on the server", err=True)
    raise typer.Exit(2)


def main() -> None:
    app(prog_name="distillery")
