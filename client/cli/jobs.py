"""`distillery jobs`: create, list, follow, cancel and collect distillation jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from client.cli import output
from client.cli.connection import connect
from client.cli.follow import follow, follow_with_progress
from client.cli.options import AfterOpt, AllOpt, JsonOpt, LimitOpt, collect
from client.http import DistilleryClient
from contract.vocab import JobStatus

app = typer.Typer(no_args_is_help=True, help="Create, follow and collect distillation jobs.")

IdArg = Annotated[str, typer.Argument(metavar="ID")]


@app.command("create")
def create(
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
    body = job_body(
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
    with connect(ctx, as_json) as client:
        job = client.create_job(**body)
    if as_json:
        return output.print_json(job)
    output.print_job(job)
    if job.webhook_secret:
        output.console().print(f"webhook secret (shown once): [bold]{job.webhook_secret}[/]")


@app.command("list")
def list_(
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
    with connect(ctx, as_json) as client:
        page = collect(client.list_jobs(limit=limit, after=after, status=status), all_pages)
    if as_json:
        return output.print_json(page)
    rows = output.table("id", "status", "stage", "progress", "teacher", "dataset", "created")
    for j in page.data:
        rows.add_row(
            j.id,
            output.status(j.status),
            j.stage or "-",
            f"{j.progress.fraction:.0%}",
            j.teacher,
            j.dataset,
            output.when(j.created_at),
        )
    output.print_page(rows, page)


@app.command("get")
def get(ctx: typer.Context, job_id: IdArg, as_json: JsonOpt = False) -> None:
    """One job: status, stage, progress, resolved config, metrics or error."""
    with connect(ctx, as_json) as client:
        job = client.get_job(job_id)
    if as_json:
        return output.print_json(job)
    output.print_job(job)


@app.command("cancel")
def cancel(ctx: typer.Context, job_id: IdArg, as_json: JsonOpt = False) -> None:
    """Cancel a job: a queued one at once, a running one within about a second."""
    with connect(ctx, as_json) as client:
        job = client.cancel_job(job_id)
    if as_json:
        return output.print_json(job)
    output.print_job(job)


@app.command("delete")
def delete(ctx: typer.Context, job_id: IdArg, as_json: JsonOpt = False) -> None:
    """Delete an ended job with its artifacts and checkpoints; a queued or running one must be
    cancelled first."""
    with connect(ctx, as_json) as client:
        deleted = client.delete_job(job_id)
    output.print_deleted(deleted, as_json)


@app.command("watch")
def watch(
    ctx: typer.Context,
    job_id: IdArg,
    poll_interval: Annotated[
        float,
        typer.Option(min=0.05, help="Seconds between polls when the event stream is unavailable."),
    ] = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Follow a job live until it ends; exit 0 if it succeeded, 1 if it failed or was
    cancelled. --json prints one JSON object a line: events, then the final job."""
    with connect(ctx, as_json) as client:
        if as_json:
            job = follow(
                client,
                job_id,
                poll_interval,
                on_event=output.print_json_line,
                on_job=lambda _: None,
            )
            output.print_json_line(job)
        else:
            job = follow_with_progress(client, job_id, poll_interval)
            output.print_job(job)
    raise typer.Exit(0 if job.status == JobStatus.succeeded else 1)


@app.command("download")
def download(
    ctx: typer.Context,
    job_id: IdArg,
    artifact: Annotated[
        str, typer.Option(help="student.zip, model.onnx, model.int8.onnx or metrics.json.")
    ] = "student.zip",
    out: Annotated[
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
    dest = out if out is not None else Path(artifact)
    with connect(ctx, as_json) as client:
        path = _download(client, job_id, artifact, dest, quiet=as_json)
    if as_json:
        summary = {
            "job": job_id,
            "artifact": artifact,
            "path": str(path),
            "size_bytes": path.stat().st_size,
        }
        typer.echo(json.dumps(summary))
    else:
        output.console().print(f"{artifact} -> [bold]{path}[/] (sha256 verified)")


def _download(
    client: DistilleryClient, job_id: str, artifact: str, dest: Path, *, quiet: bool
) -> Path:
    if quiet:
        return client.download_artifact(job_id, artifact, dest)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=output.console(),
    ) as bar:
        task = bar.add_task(artifact, total=None)
        return client.download_artifact(
            job_id,
            artifact,
            dest,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )


def job_body(
    config: Path | None,
    *,
    hyperparameters: dict[str, Any],
    student_preset: str | None,
    **fields: Any,
) -> dict[str, Any]:
    """The request body: --config's JSON object, then every option given on top of it."""
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
