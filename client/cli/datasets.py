"""`distillery datasets`: upload, list and delete training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.filesize import decimal

from client.cli import output
from client.cli.connection import connect
from client.cli.options import AfterOpt, AllOpt, JsonOpt, LimitOpt, collect

app = typer.Typer(no_args_is_help=True, help="Upload, list and delete training datasets.")


@app.command("upload")
def upload(
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
    with connect(ctx, as_json) as client:
        dataset = client.upload_dataset(file)
    if as_json:
        return output.print_json(dataset)
    output.print_fields(
        {
            "id": dataset.id,
            "filename": dataset.filename,
            "format": dataset.format,
            "rows": dataset.num_rows,
            "labels": output.labels(dataset.label_type, dataset.labels),
            "text pairs": dataset.has_text_pair,
            "size": decimal(dataset.size_bytes),
            "sha256": dataset.sha256,
            "created": output.when(dataset.created_at),
        }
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    limit: LimitOpt = 20,
    after: AfterOpt = None,
    all_pages: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Datasets, newest first."""
    with connect(ctx, as_json) as client:
        page = collect(client.list_datasets(limit=limit, after=after), all_pages)
    if as_json:
        return output.print_json(page)
    rows = output.table("id", "filename", "rows", "labels", "size", "created")
    for d in page.data:
        rows.add_row(
            d.id,
            d.filename,
            str(d.num_rows),
            output.labels(d.label_type, d.labels),
            decimal(d.size_bytes),
            output.when(d.created_at),
        )
    output.print_page(rows, page)


@app.command("delete")
def delete(
    ctx: typer.Context,
    dataset_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonOpt = False,
) -> None:
    """Delete a dataset and its stored file; refused while a queued or running job reads it."""
    with connect(ctx, as_json) as client:
        deleted = client.delete_dataset(dataset_id)
    output.print_deleted(deleted, as_json)
