"""`distillery models`: upload, list and delete teachers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from client.cli import output
from client.cli.connection import connect
from client.cli.options import AfterOpt, AllOpt, JsonOpt, LimitOpt, collect

app = typer.Typer(no_args_is_help=True, help="Upload, list and delete teacher models.")


@app.command("upload")
def upload(
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
    with connect(ctx, as_json) as client:
        model = client.upload_model(path)
    if as_json:
        return output.print_json(model)
    output.print_fields(
        {
            "id": model.id,
            "filename": model.filename,
            "model type": model.model_type,
            "parameters": f"{model.num_parameters:,}",
            "layers": model.num_layers,
            "hidden size": model.hidden_size,
            "task head": model.has_task_head,
            "labels": ", ".join(model.labels) or "-",
            "created": output.when(model.created_at),
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
    """Uploaded teachers, newest first, after the ready-made catalog."""
    with connect(ctx, as_json) as client:
        page = collect(client.list_models(limit=limit, after=after), all_pages)
    if as_json:
        return output.print_json(page)
    rows = output.table("id", "source", "layers", "hidden", "parameters", "head", "created")
    for m in page.data:
        rows.add_row(
            m.id,
            m.source,
            str(m.num_layers),
            str(m.hidden_size),
            f"{m.num_parameters:,}",
            "yes" if m.has_task_head else "no",
            output.when(m.created_at),
        )
    output.print_page(rows, page)


@app.command("delete")
def delete(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonOpt = False,
) -> None:
    """Delete an uploaded model (mdl_…) and its files; refused while a queued or running job
    reads it."""
    with connect(ctx, as_json) as client:
        deleted = client.delete_model(model_id)
    output.print_deleted(deleted, as_json)
