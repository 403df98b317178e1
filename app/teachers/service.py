"""Teacher uploads (validated archives) and the catalog of ready teachers."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sqlalchemy.orm import Session

from app.auth.service import check_storage_quota
from app.config import Settings
from app.errors import AppError
from app.ids import new_id
from app.jobs import usage
from app.keys import model_prefix
from app.pagination import Page
from app.storage import Removal, Storage, check_key
from app.teachers import archive, catalog, repository
from app.teachers.inspect import inspect_folder
from app.teachers.models import UploadedModel
from app.teachers.schemas import ModelPublic
from app.uploads import SpooledUpload


def create_model(
    session: Session, *, storage: Storage, settings: Settings, tenant_id: str, upload: SpooledUpload
) -> UploadedModel:
    model_id = new_id("mdl")
    prefix = model_prefix(tenant_id, model_id)
    with tempfile.TemporaryDirectory(prefix="distillery-model-") as tmp:
        archive.extract(
            upload.path,
            Path(tmp),
            max_members=settings.max_archive_members,
            max_unpacked_bytes=settings.max_model_unpacked_bytes,
        )
        info = inspect_folder(Path(tmp))
        files = _model_files(info.root)
        # The unpacked bytes are what storage will hold: a 200 KiB zip of 200 MiB counts 200 MiB.
        unpacked = sum(path.stat().st_size for path, _ in files)
        check_storage_quota(
            session, settings=settings, tenant_id=tenant_id, incoming_bytes=unpacked
        )
        try:
            for path, relative in files:
                storage.put_file(f"{prefix}/{relative}", path)
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
                    stored_bytes=unpacked,
                    storage_key=prefix,
                ),
            )
        except BaseException:
            storage.delete_prefix(prefix)  # no orphan files for a model that was not recorded
            raise


def _model_files(root: Path) -> list[tuple[Path, str]]:
    """(file, its key below the model's prefix) for every file of the model, checked."""
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
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
        files.append((path, relative.as_posix()))
    return files


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


def delete_model(session: Session, *, settings: Settings, tenant_id: str, model_id: str) -> Removal:
    """Remove an uploaded model's row; its files go once the caller has committed. 409 while a
    queued or running job reads it (as teacher, student start or augmentation model), and for
    the catalog's models, which are no tenant's to delete."""
    if not model_id.startswith("mdl_"):
        if catalog.resolve(model_id, settings.model_dir) is not None:
            raise AppError(
                "model_not_deletable",
                f"'{model_id}' is a catalog model, shared by every tenant; only uploaded "
                "models (mdl_…) can be deleted",
                409,
            )
        raise AppError("model_not_found", f"no model '{model_id}'", 404)
    model = repository.get(session, tenant_id=tenant_id, model_id=model_id, lock="update")
    if model is None:
        raise AppError("model_not_found", f"no model '{model_id}'", 404)
    usage.refuse_if_used(
        session,
        tenant_id=tenant_id,
        code="model_in_use",
        what=f"model '{model_id}'",
        uses=lambda job: model.id in usage.models_of(job),
    )
    repository.delete(session, model)
    return Removal(prefixes=(model.storage_key,))


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
