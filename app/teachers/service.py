"""Teacher uploads (validated archives) and the catalog of ready teachers."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import AppError
from app.ids import new_id
from app.pagination import Page
from app.storage import Storage, check_key
from app.teachers import archive, catalog, repository
from app.teachers.inspect import inspect_folder
from app.teachers.models import UploadedModel
from app.teachers.schemas import ModelPublic
from app.uploads import SpooledUpload


def create_model(
    session: Session, *, storage: Storage, settings: Settings, tenant_id: str, upload: SpooledUpload
) -> UploadedModel:
    model_id = new_id("mdl")
    prefix = f"tenants/{tenant_id}/models/{model_id}"
    with tempfile.TemporaryDirectory(prefix="distillery-model-") as tmp:
        archive.extract(
            upload.path,
            Path(tmp),
            max_members=settings.max_archive_members,
            max_unpacked_bytes=settings.max_model_unpacked_bytes,
        )
        info = inspect_folder(Path(tmp))
        try:
            for path in sorted(p for p in info.root.rglob("*") if p.is_file()):
                relative = path.relative_to(info.root)
                if any(part.startswith(".") or part == "__MACOSX" for part in relative.parts):
                    continue  # .gitattributes, Finder's ._ files: not part of the model
                try:
                    check_key(relative.as_posix())
                except ValueError as exc:
                    raise AppError(
                        "model_invalid",
                        f"archive member {relative.as_posix()!r} has an unusable file name",
                        422,
                        field="file",
                    ) from exc
                storage.put_file(f"{prefix}/{relative.as_posix()}", path)
            return repository.add(
                session,
                UploadedModel(
                    id=model_id,
                    tenant_id=tenant_id,
                    filename=upload.filename,
                    model_type=info.model_type,
                    num_parameters=info.num_parameters,
                    num_layers=info.num_layers,
                    hidden_size=info.hidden_size,
                    has_task_head=info.has_task_head,
                    labels=info.labels,
                    config=info.config,
                    sha256=upload.sha256,
                    size_bytes=upload.size_bytes,
                    storage_key=prefix,
                ),
            )
        except BaseException:
            storage.delete_prefix(prefix)  # no orphan files for a model that was not recorded
            raise


def to_public(model: UploadedModel) -> ModelPublic:
    return ModelPublic(
        id=model.id,
        source="upload",
        filename=model.filename,
        model_type=model.model_type,
        num_parameters=model.num_parameters,
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        has_task_head=model.has_task_head,
        labels=model.labels,
        created_at=model.created_at,
    )


def catalog_models(settings: Settings) -> list[ModelPublic]:
    return [
        ModelPublic(
            id=e.name,
            source=e.source,
            filename=None,
            model_type=e.info.model_type,
            num_parameters=e.info.num_parameters,
            num_layers=e.info.num_layers,
            hidden_size=e.info.hidden_size,
            has_task_head=e.info.has_task_head,
            labels=e.info.labels,
            created_at=None,
        )
        for e in catalog.entries(settings.model_dir)
    ]


def get_model(
    session: Session, *, settings: Settings, tenant_id: str, model_id: str
) -> ModelPublic:
    if model_id.startswith("mdl_"):
        model = repository.get(session, tenant_id=tenant_id, model_id=model_id)
        if model is not None:
            return to_public(model)
    else:
        for entry in catalog_models(settings):
            if entry.id == catalog.ALIASES.get(model_id, model_id):
                return entry
    raise AppError("model_not_found", f"no model '{model_id}'", 404)


def list_models(
    session: Session, *, settings: Settings, tenant_id: str, limit: int, after: str | None
) -> Page[ModelPublic]:
    """Uploaded models, newest first; the first page leads with the ready-made catalog."""
    rows = repository.page(session, tenant_id=tenant_id, limit=limit, after=after)
    data = [to_public(r) for r in rows[:limit]]
    if after is None:
        data = catalog_models(settings) + data
    has_more = len(rows) > limit
    return Page(data=data, has_more=has_more, next_cursor=rows[limit - 1].id if has_more else None)
