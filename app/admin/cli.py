"""The `distillery-admin` console script: operators' commands, run beside the database.

The client's `distillery` never imports the server; whatever needs the database is here.
"""

from __future__ import annotations

import typer

from app.admin import keys, tenants

app = typer.Typer(
    name="distillery-admin",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Operate a Distillery deployment: API keys and tenant limits (needs the database; "
    "reads DISTILLERY_DATABASE_URL).",
)
app.add_typer(keys.app, name="keys")
app.add_typer(tenants.app, name="tenants")


def main() -> None:
    app(prog_name="distillery-admin")
