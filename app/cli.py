"""The `distillery` console script: datasets, models and jobs over the HTTP API."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from app.client import DEFAULT_BASE_URL, DistilleryClient, DistilleryError, Event, Job, Page

app = typer.Typer(
    name="distillery",
    no_args_is_help=True,
    help="Distillation as a service: upload data and teachers, run and watch "
    "jobs, download students.",
)
datasets_app = typer.Typer(no_args_is_help=True, help="Upload and list training datasets.")
models_app = typer.Typer(no_args_is_help=True, help="Upload and list teacher models.")
jobs_app = typer.Typer(no_args_is_help=True, help="Create, follow and collect distillation jobs.")
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
# `distillery keys …` (operators) is dispatched in main(): it needs the database layer, which
# a client-only install never imports.

ClientFactory = Callable[[str, str | None], DistilleryClient]


def default_client(base_url: str, api_key: str | None) -> DistilleryClient:
    return DistilleryClient(base_url, api_key=api_key)


# Tests point the CLI at an in-process server by replacing this.
client_factory: ClientFactory = default_client

T = TypeVar("T", bound=BaseModel)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
LimitOpt = Annotated[int, typer.Option("--limit", min=1, max=100, help="Page size.")]
AfterOpt = Annotated[
    str | None,
    typer.Option("--after", help="next_cursor of the previous page.", show_default=False),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Follow next_cursor through every page.")]
STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


@dataclass(frozen=True)
class Options:
    base_url: str
    api_key: str | None


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


def main() -> None:
    if sys.argv[1:2] == ["keys"]:
        from app.auth.cli import keys_app

        keys_app(args=sys.argv[2:], prog_name="distillery keys")
        return
    app()


# --- datasets ---


@datasets_app.command("upload")
def datasets_upload(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="JSONL or CSV: text, optional text_pair, label.",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Upload and validate a dataset; a bad row is reported with its line and field."""
    with _connect(ctx, as_json) as client:
        dataset = client.upload_dataset(file)
    if as_json:
        return _print_json(dataset)
    _print_fields(
        {
            "id": dataset.id,
            "filename": dataset.filename,
            "format": dataset.format,
            "rows": dataset.num_rows,
            "labels": _labels(dataset.label_type, dataset.labels),
            "text pairs": dataset.has_text_pair,
            "size": decimal(dataset.size_bytes),
            "sha256": dataset.sha256,
            "created": _when(dataset.created_at),
        }
    )


@datasets_app.command("list")
def datasets_list(
    ctx: typer.Context,
    limit: LimitOpt = 20,
    after: AfterOpt = None,
    all_pages: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Datasets, newest first."""
    with _connect(ctx, as_json) as client:
        page = _collect(client.list_datasets(limit=limit, after=after), all_pages)
    if as_json:
        return _print_json(page)
    table = _table("id", "filename", "rows", "labels", "size", "created")
    for d in page.data:
        table.add_row(
            d.id,
            d.filename,
            str(d.num_rows),
            _labels(d.label_type, d.labels),
            decimal(d.size_bytes),
            _when(d.created_at),
        )
    _print_page(table, page)


# --- models ---


@models_app.command("upload")
def models_upload(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            exists=True, readable=True, help="A save_pretrained folder, or a .zip/.tar.gz of one."
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Upload a teacher (safetensors weights, BERT model_type); a folder is zipped first."""
    with _connect(ctx, as_json) as client:
        model = client.upload_model(path)
    if as_json:
        return _print_json(model)
    _print_fields(
        {
            "id": model.id,
            "filename": model.filename,
            "model type": model.model_type,
            "parameters": f"{model.num_parameters:,}",
            "layers": model.num_layers,
            "hidden size": model.hidden_size,
            "task head": model.has_task_head,
            "labels": ", ".join(model.labels) or "-",
            "created": _when(model.created_at),
        }
    )


@models_app.command("list")
def models_list(
    ctx: typer.Context,
    limit: LimitOpt = 20,
    after: AfterOpt = None,
    all_pages: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Uploaded teachers, newest first, after the ready-made catalog."""
    with _connect(ctx, as_json) as client:
        page = _collect(client.list_models(limit=limit, after=after), all_pages)
    if as_json:
        return _print_json(page)
    table = _table("id", "source", "layers", "hidden", "parameters", "head", "created")
    for m in page.data:
        table.add_row(
            m.id,
            m.source,
            str(m.num_layers),
            str(m.hidden_size),
            f"{m.num_parameters:,}",
            "yes" if m.has_task_head else "no",
            _when(m.created_at),
        )
    _print_page(table, page)


# --- jobs ---


@jobs_app.command("create")
def jobs_create(
    ctx: typer.Context,
    teacher: Annotated[
        str | None,
        typer.Option(help="mdl_… id, catalog name or Hugging Face hub id.", show_default=False),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Training dataset id.", show_default=False)
    ] = None,
    validation_dataset: Annotated[str | None, typer.Option(show_default=False)] = None,
    student_preset: Annotated[
        str | None,
        typer.Option(
            help="e.g. tinybert-4l-312d, tinybert-6l-768d, minilm-3l-384d, bert-2l-128d.",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(show_default=False)] = None,
    max_seq_length: Annotated[int | None, typer.Option(show_default=False)] = None,
    learning_rate: Annotated[float | None, typer.Option(show_default=False)] = None,
    temperature: Annotated[float | None, typer.Option(show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(show_default=False)] = None,
    webhook_url: Annotated[str | None, typer.Option(show_default=False)] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            readable=True,
            show_default=False,
            help="A JSON file with the full request body; the options above override it.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a distillation job; the server fills every default and validates the rest."""
    body = _job_body(
        config,
        teacher=teacher,
        dataset=dataset,
        validation_dataset=validation_dataset,
        student_preset=student_preset,
        seed=seed,
        webhook_url=webhook_url,
        hyperparameters={
            "epochs": epochs,
            "batch_size": batch_size,
            "max_seq_length": max_seq_length,
            "learning_rate": learning_rate,
            "temperature": temperature,
        },
    )
    with _connect(ctx, as_json) as client:
        job = client.create_job(**body)
    if as_json:
        return _print_json(job)
    _print_job(job)
    if job.webhook_secret:
        _console().print(f"webhook secret (shown once): [bold]{job.webhook_secret}[/]")


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(help="queued, running, succeeded, failed or cancelled.", show_default=False),
    ] = None,
    limit: LimitOpt = 20,
    after: AfterOpt = None,
    all_pages: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Jobs, newest first."""
    with _connect(ctx, as_json) as client:
        page = _collect(client.list_jobs(limit=limit, after=after, status=status), all_pages)
    if as_json:
        return _print_json(page)
    table = _table("id", "status", "stage", "progress", "teacher", "dataset", "created")
    for j in page.data:
        table.add_row(
            j.id,
            _status(j.status),
            j.stage or "-",
            f"{j.progress.fraction:.0%}",
            j.teacher,
            j.dataset,
            _when(j.created_at),
        )
    _print_page(table, page)


@jobs_app.command("get")
def jobs_get(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonOpt = False,
) -> None:
    """One job: status, stage, progress, resolved config, metrics or error."""
    with _connect(ctx, as_json) as client:
        job = client.get_job(job_id)
    if as_json:
        return _print_json(job)
    _print_job(job)


@jobs_app.command("cancel")
def jobs_cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonOpt = False,
) -> None:
    """Cancel a job: a queued one at once, a running one at its next step."""
    with _connect(ctx, as_json) as client:
        job = client.cancel_job(job_id)
    if as_json:
        return _print_json(job)
    _print_job(job)


@jobs_app.command("watch")
def jobs_watch(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    poll_interval: Annotated[
        float,
        typer.Option(min=0.05, help="Seconds between polls when the event stream is unavailable."),
    ] = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Follow a job live until it ends; exit 0 if it succeeded, 1 if it failed or was
    cancelled. --json prints one JSON object a line: events, then the final job."""
    with _connect(ctx, as_json) as client:
        if as_json:
            job = _watch(
                client, job_id, poll_interval, on_event=_print_json_line, on_job=lambda _: None
            )
            _print_json_line(job)
        else:
            job = _watch_with_progress(client, job_id, poll_interval)
            _print_job(job)
    raise typer.Exit(0 if job.status == "succeeded" else 1)


@jobs_app.command("download")
def jobs_download(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    artifact: Annotated[
        str, typer.Option(help="student.zip, model.onnx, model.int8.onnx or metrics.json.")
    ] = "student.zip",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            show_default=False,
            help="File or folder to write to [default: ./ARTIFACT].",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download an artifact, resuming a broken download and checking its sha256."""
    dest = output if output is not None else Path(artifact)
    with _connect(ctx, as_json) as client:
        if as_json:
            path = client.download_artifact(job_id, artifact, dest)
        else:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=_console(),
            ) as bar:
                task = bar.add_task(artifact, total=None)
                path = client.download_artifact(
                    job_id,
                    artifact,
                    dest,
                    on_progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "job": job_id,
                    "artifact": artifact,
                    "path": str(path),
                    "size_bytes": path.stat().st_size,
                }
            )
        )
    else:
        _console().print(f"{artifact} -> [bold]{path}[/] (sha256 verified)")


# --- following a job ---


def _watch(
    client: DistilleryClient,
    job_id: str,
    poll_interval: float,
    *,
    on_event: Callable[[Event], None],
    on_job: Callable[[Job], None],
    job: Job | None = None,
) -> Job:
    """Events from the SSE stream while it works, then polling; returns the ended job."""
    job = job or client.get_job(job_id)
    on_job(job)
    if job.ended:
        return job
    try:
        for event in client.stream_events(job_id):
            on_event(event)
    except DistilleryError as exc:
        # An older server without the stream, or one that keeps dropping it: poll instead.
        if exc.status in (401, 403):
            raise
    return client.wait(job_id, on_update=on_job, poll_interval=poll_interval)


def _watch_with_progress(client: DistilleryClient, job_id: str, poll_interval: float) -> Job:
    job = client.get_job(job_id)
    if job.ended:
        return job
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[stage]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        console=_console(),
    ) as bar:
        task = bar.add_task(job_id, total=None, stage="queued", loss="")
        state = _BarState(bar, task)

        def on_event(event: Event) -> None:
            state.event(event)
            if event.type in ("stage_started", "job_started") or state.total is None:
                state.job(client.get_job(job_id))

        return _watch(client, job_id, poll_interval, on_event=on_event, on_job=state.job, job=job)


@dataclass
class _BarState:
    bar: Progress
    task: TaskID
    total: int | None = None

    def job(self, job: Job) -> None:
        if job.progress.total_steps:
            self.total = job.progress.total_steps
        self.bar.update(
            self.task, stage=job.stage or job.status, total=self.total, completed=job.progress.step
        )

    def event(self, event: Event) -> None:
        data = event.data
        if event.type == "stage_started" and data.get("stage"):
            self.bar.update(self.task, stage=data["stage"])
        if isinstance(data.get("step"), int):
            self.bar.update(self.task, completed=data["step"])
        losses = data.get("losses")  # on loss and stage_finished events
        if isinstance(losses, dict) and isinstance(losses.get("total"), int | float):
            self.bar.update(self.task, loss=f"loss {float(losses['total']):.4f}")
        if event.type in ("evaluation", "stage_finished") or event.level in ("warning", "error"):
            self.bar.console.print(f"[dim]{_when(event.created_at)}[/] {event.message}")


# --- plumbing ---


@contextmanager
def _connect(ctx: typer.Context, as_json: bool) -> Iterator[DistilleryClient]:
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
            _console(stderr=True).print(
                f"[red]error[/] [bold]{exc.code}[/]: {exc.message}{where}", highlight=False
            )
        raise typer.Exit(1) from None


def _job_body(
    config: Path | None,
    *,
    hyperparameters: dict[str, Any],
    student_preset: str | None,
    **fields: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if config is not None:
        try:
            body = json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(f"{config} is not JSON: {exc}", param_hint="--config") from exc
        if not isinstance(body, dict):
            raise typer.BadParameter(f"{config} must hold a JSON object", param_hint="--config")
    body.update({k: v for k, v in fields.items() if v is not None})
    if hyper := {k: v for k, v in hyperparameters.items() if v is not None}:
        body["hyperparameters"] = {**(body.get("hyperparameters") or {}), **hyper}
    if student_preset is not None:
        body["student"] = {**(body.get("student") or {}), "preset": student_preset}
    for name in ("teacher", "dataset"):
        if not body.get(name):
            raise typer.BadParameter(
                f"required here or as '{name}' in --config", param_hint=f"--{name}"
            )
    return body


def _collect(pages: Iterator[Page[T]], all_pages: bool) -> Page[T]:
    first = next(pages)
    if not all_pages:
        return first
    data = list(first.data)
    for page in pages:
        data.extend(page.data)
    return first.model_copy(update={"data": data, "has_more": False, "next_cursor": None})


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr)


def _print_json(obj: BaseModel) -> None:
    typer.echo(json.dumps(obj.model_dump(mode="json"), indent=2))


def _print_json_line(obj: BaseModel) -> None:
    typer.echo(json.dumps(obj.model_dump(mode="json")))


def _table(*columns: str) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in columns:
        table.add_column(name, no_wrap=name == "id")
    return table


def _print_page(table: Table, page: Page[Any]) -> None:
    console = _console()
    console.print(table if page.data else "[dim]nothing yet[/]")
    if page.has_more:
        console.print(f"[dim]more: --after {page.next_cursor}[/]")


def _print_fields(fields: dict[str, Any]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in fields.items():
        grid.add_row(name, value if isinstance(value, str) else _plain(value))
    _console().print(grid)


def _print_job(job: Job) -> None:
    p = job.progress
    fields: dict[str, Any] = {
        "id": job.id,
        "status": _status(job.status),
        "stage": job.stage or "-",
        "progress": f"{p.step}/{p.total_steps} ({p.fraction:.0%})" if p.total_steps else "-",
        "teacher": job.teacher,
        "dataset": job.dataset,
        "validation": job.validation_dataset or "-",
        "task": job.task,
        "student": job.student.get("preset") or "custom",
        "created": _when(job.created_at),
        "started": _when(job.started_at),
        "finished": _when(job.finished_at),
    }
    if job.error is not None:
        fields["error"] = f"[red]{job.error.code}[/]: {job.error.message}"
    # The headline numbers; latency and ONNX detail sit deeper, in --json.
    for name, value in _flatten(job.metrics or {}, depth=2).items():
        fields[f"metrics.{name}"] = _plain(value)
    _print_fields(fields)


def _flatten(metrics: dict[str, Any], *, depth: int, prefix: str = "") -> dict[str, Any]:
    """{"student": {"accuracy": 0.9}} -> {"student.accuracy": 0.9}, down to `depth` levels;
    lists are left out."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            if depth > 1:
                flat.update(_flatten(value, depth=depth - 1, prefix=f"{prefix}{key}."))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _labels(label_type: str, labels: list[str]) -> str:
    return f"{label_type}: {', '.join(labels)}" if labels else label_type


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"
