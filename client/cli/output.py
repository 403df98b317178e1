"""How the CLI prints: JSON for scripts, rich tables and fields for people."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from client.resources import Deleted, Job, Page
from contract.vocab import JobStatus

STATUS_STYLE: dict[str, str] = {
    JobStatus.queued: "yellow",
    JobStatus.running: "cyan",
    JobStatus.succeeded: "green",
    JobStatus.failed: "red",
    JobStatus.cancelled: "magenta",
}


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr)


def print_json(obj: BaseModel) -> None:
    typer.echo(json.dumps(obj.model_dump(mode="json"), indent=2))


def print_deleted(deleted: Deleted, as_json: bool) -> None:
    if as_json:
        return print_json(deleted)
    console().print(f"deleted {deleted.id}")


def print_json_line(obj: BaseModel) -> None:
    typer.echo(json.dumps(obj.model_dump(mode="json")))


def table(*columns: str) -> Table:
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for name in columns:
        grid.add_column(name, no_wrap=name == "id")
    return grid


def print_page(rows: Table, page: Page[Any]) -> None:
    out = console()
    out.print(rows if page.data else "[dim]nothing yet[/]")
    if page.has_more:
        out.print(f"[dim]more: --after {page.next_cursor}[/]")


def print_fields(fields: dict[str, Any]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in fields.items():
        grid.add_row(name, value if isinstance(value, str) else plain(value))
    console().print(grid)


def print_job(job: Job) -> None:
    p = job.progress
    fields: dict[str, Any] = {
        "id": job.id,
        "status": status(job.status),
        "stage": job.stage or "-",
        "progress": f"{p.step}/{p.total_steps} ({p.fraction:.0%})" if p.total_steps else "-",
        "teacher": job.teacher,
        "dataset": job.dataset,
        "validation": job.validation_dataset or "-",
        "task": job.task,
        "student": job.student.get("preset") or "custom",
        "created": when(job.created_at),
        "started": when(job.started_at),
        "finished": when(job.finished_at),
    }
    if job.error is not None:
        fields["error"] = f"[red]{job.error.code}[/]: {job.error.message}"
    # The headline numbers; latency and ONNX detail sit deeper, in --json.
    for name, value in flatten(job.metrics or {}, depth=2).items():
        fields[f"metrics.{name}"] = plain(value)
    print_fields(fields)


def flatten(metrics: dict[str, Any], *, depth: int, prefix: str = "") -> dict[str, Any]:
    """{"student": {"accuracy": 0.9}} -> {"student.accuracy": 0.9}, down to `depth` levels;
    lists are left out."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            if depth > 1:
                flat.update(flatten(value, depth=depth - 1, prefix=f"{prefix}{key}."))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat


def plain(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def status(name: str) -> str:
    return f"[{STATUS_STYLE.get(name, 'white')}]{name}[/]"


def labels(label_type: str, names: list[str]) -> str:
    return f"{label_type}: {', '.join(names)}" if names else label_type


def when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"
