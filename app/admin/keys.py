"""`distillery-admin keys`: create, list and revoke API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.admin.errors import reported
from app.auth import service
from app.db import session_factory

app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")


@app.command("create")
def create(
    tenant: Annotated[str, typer.Option("--tenant", help="The tenant's name; created if new.")],
    name: Annotated[
        str | None, typer.Option(help="A label for the key.", show_default=False)
    ] = None,
) -> None:
    """Create a key; its secret is printed once, on the last line, and never stored."""
    with reported(), session_factory().begin() as session:
        key, plaintext = service.create_key(session, tenant_id=tenant, name=name)
        key_id = key.id
    Console().print(f"key id: {key_id}\ntenant: {tenant}")
    typer.echo(plaintext)


@app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")]) -> None:
    """Revoke a key: requests with it answer 401 from now on."""
    with reported(), session_factory().begin() as session:
        service.revoke_key(session, key_id=key_id)
    Console().print(f"revoked {key_id}")


@app.command("list")
def list_(
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only this tenant's keys.", show_default=False)
    ] = None,
) -> None:
    """Keys, oldest first: id, tenant, prefix, name, created, revoked. Secrets are never shown."""
    with session_factory()() as session:
        lines = [
            (
                k.id,
                k.tenant_id,
                k.prefix + "…",
                k.name or "",
                k.created_at.isoformat(timespec="seconds"),
                k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "",
            )
            for k in service.list_keys(session, tenant_id=tenant)
        ]
    console = Console()
    if not console.is_terminal:  # scripts get one tab-separated key per line
        for line in lines:
            typer.echo("\t".join(line))
        return
    table = Table("id", "tenant", "prefix", "name", "created", "revoked")
    for line in lines:
        table.add_row(*line)
    console.print(table)
