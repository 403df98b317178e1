"""`distillery-admin tenants`: a tenant's limits and usage, and setting those limits."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.filesize import decimal
from rich.table import Table

from app.admin.errors import reported
from app.auth import service
from app.auth.service import LimitName, TenantReport
from app.config import get_settings
from app.db import session_factory

app = typer.Typer(no_args_is_help=True, help="Show a tenant's limits and usage; set its limits.")

DEFAULT = "default"
_COUNTS = ("max_active_jobs", "retention_days")  # whole numbers, never sizes with a unit
_SIZE = re.compile(r"^(\d+)\s*([kmgt]i?b|b)?$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

TenantArg = Annotated[str, typer.Argument(metavar="TENANT", help="The tenant's name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _limit_option(help_text: str, metavar: str) -> Any:  # typer.Option is typed as Any
    return typer.Option(
        metavar=f"{metavar}|{DEFAULT}",
        show_default=False,
        help=f"{help_text}; '{DEFAULT}' clears it.",
    )


@app.command("show")
def show(tenant: TenantArg, as_json: JsonOpt = False) -> None:
    """A tenant's own limits, the limits in force (own or the service default) and its usage."""
    with reported(), session_factory()() as session:
        report = service.describe_tenant(session, settings=get_settings(), tenant_id=tenant)
    _print(report, as_json)


@app.command("set-limits")
def set_limits(
    tenant: TenantArg,
    max_active_jobs: Annotated[
        str | None, _limit_option("Queued plus running jobs at once", "COUNT")
    ] = None,
    max_upload_bytes: Annotated[
        str | None,
        _limit_option("Largest upload, e.g. 500MB or 2GiB; only lowers the service's caps", "SIZE"),
    ] = None,
    max_stored_bytes: Annotated[
        str | None,
        _limit_option(
            "Datasets, unpacked models, checkpoints and artifacts together, e.g. 50GB", "SIZE"
        ),
    ] = None,
    retention_days: Annotated[
        str | None,
        _limit_option("Days a finished job keeps its artifacts and checkpoints", "DAYS"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set or clear a tenant's limits; what is not named stays as it is."""
    given: dict[LimitName, str | None] = {
        "max_active_jobs": max_active_jobs,
        "max_upload_bytes": max_upload_bytes,
        "max_stored_bytes": max_stored_bytes,
        "retention_days": retention_days,
    }
    limits = {name: _parse_limit(name, value) for name, value in given.items() if value is not None}
    if not limits:
        raise typer.BadParameter("name at least one limit to set or clear")
    settings = get_settings()
    with reported(), session_factory().begin() as session:
        service.set_limits(session, tenant_id=tenant, limits=limits)
        report = service.describe_tenant(session, settings=settings, tenant_id=tenant)
    _print(report, as_json)


def _parse_limit(name: LimitName, value: str) -> int | None:
    """'default' -> None; a count for jobs; bytes with an optional unit (MB, GiB) otherwise."""
    if value.strip().lower() == DEFAULT:
        return None
    match = _SIZE.match(value.strip())
    count = name in _COUNTS
    if match is None or (count and match.group(2)):
        raise typer.BadParameter(
            f"{value!r} is not a whole number{'' if count else ' of bytes'}",
            param_hint=f"--{name.replace('_', '-')}",
        )
    return int(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]


def _print(report: TenantReport, as_json: bool) -> None:
    if as_json:
        data = dataclasses.asdict(report) | {"created_at": report.created_at.isoformat()}
        typer.echo(json.dumps(data, indent=2))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    in_force, own = report.in_force, report.own
    grid.add_row("tenant", report.tenant)
    grid.add_row("created", report.created_at.isoformat(timespec="seconds"))
    grid.add_row("active keys", str(report.active_keys))
    grid.add_row(
        "active jobs",
        f"{report.active_jobs} of {in_force['max_active_jobs']}{_source(own['max_active_jobs'])}",
    )
    grid.add_row(
        "stored",
        f"{decimal(report.stored_bytes)} of {_size(in_force['max_stored_bytes'])}"
        f"{_source(own['max_stored_bytes'])}",
    )
    grid.add_row(
        "upload cap",
        f"datasets {_size(in_force['max_dataset_upload_bytes'])}, "
        f"models {_size(in_force['max_model_upload_bytes'])}{_source(own['max_upload_bytes'])}",
    )
    days = in_force["retention_days"]
    grid.add_row(
        "retention",
        f"{'for ever' if days is None else f'{days} days'}{_source(own['retention_days'])}",
    )
    Console().print(grid)


def _size(value: int | None) -> str:
    return "none" if value is None else decimal(value)


def _source(own: int | None) -> str:
    return " (default)" if own is None else " (set for this tenant)"
