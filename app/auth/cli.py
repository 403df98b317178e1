"""`distillery keys …`: operator commands that talk to the database directly."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from app.auth import service
from app.db import session_factory
from app.errors import AppError

keys_app = typer.Typer(
    help="Create, list and revoke API keys (operators; needs the database).",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)
console = Console()


@keys_app.command("create")
def create(
    tenant: str = typer.Option(..., "--tenant", help="tenant name; created if new"),
    name: str | None = typer.Option(None, help="a label for the key"),
) -> None:
    """Create a key; its secret is printed once and never stored."""
    try:
        with session_factory().begin() as session:
            key, plaintext = service.create_key(session, tenant_id=tenant, name=name)
            key_id = key.id
    except AppError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"key id: {key_id}\ntenant: {tenant}")
    typer.echo(plaintext)


@keys_app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="the key's id (key_…)")) -> None:
    """Revoke a key: requests with it answer 401 from now on."""
    try:
        with session_factory().begin() as session:
            service.revoke_key(session, key_id=key_id)
    except AppError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"revoked {key_id}")


@keys_app.command("list")
def list_keys(tenant: str | None = typer.Option(None, "--tenant")) -> None:
    with session_factory()() as session:
        rows = service.list_keys(session, tenant_id=tenant)
        lines = [
            (
                k.id,
                k.tenant_id,
                k.prefix + "…",
                k.name or "",
                k.created_at.isoformat(timespec="seconds"),
                k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "",
            )
            for k in rows
        ]
    if not console.is_terminal:  # scripts get one tab-separated key per line
        for line in lines:
            typer.echo("\t".join(line))
        return
    table = Table("id", "tenant", "prefix", "name", "created", "revoked")
    for line in lines:
        table.add_row(*line)
    console.print(table)
