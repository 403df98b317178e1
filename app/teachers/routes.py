from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Response, UploadFile, status

from app.config import get_settings
from app.deps import IdempotencyKeyHeader, SessionDep, TenantDbDep, TenantDep
from app.openapi import errors
from app.pagination import AfterQuery, LimitQuery, Page
from app.storage import get_storage
from app.teachers import service
from app.teachers.schemas import ModelPublic
from app.uploads import handle_upload

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelPublic,
    responses=errors(
        "idempotency_key_reused",
        "idempotency_key_in_progress",
        "file_too_large",
        "storage_quota_exceeded",
        "model_invalid",
        "file_empty",
        "invalid_request",
    ),
)
async def upload_model(
    session: SessionDep,
    tenant: TenantDep,
    file: Annotated[UploadFile, File(description=".zip or .tar.gz of a save_pretrained folder")],
    idempotency_key: IdempotencyKeyHeader = None,
) -> Any:
    """Upload a teacher: safetensors weights only, BERT model_type, no custom code."""
    settings = get_settings()
    return await handle_upload(
        session,
        tenant=tenant,
        file=file,
        idempotency_key=idempotency_key,
        endpoint="POST /v1/models",
        max_bytes=settings.max_model_bytes,
        create=lambda upload: service.to_public(
            service.create_model(
                session, storage=get_storage(), settings=settings, tenant_id=tenant, upload=upload
            )
        ),
    )


@router.get("", response_model=Page[ModelPublic], responses=errors("invalid_request"))
def list_models(
    session: SessionDep, tenant: TenantDep, limit: LimitQuery = 20, after: AfterQuery = None
) -> Page[ModelPublic]:
    """Uploaded models, newest first; the first page also lists the ready-made catalog."""
    return service.list_models(
        session, settings=get_settings(), tenant_id=tenant, limit=limit, after=after
    )


@router.get(
    "/{model_id:path}",
    response_model=ModelPublic,
    responses=errors("model_not_found", "invalid_request"),
)
def get_model(model_id: str, session: SessionDep, tenant: TenantDep) -> ModelPublic:
    return service.get_model(session, settings=get_settings(), tenant_id=tenant, model_id=model_id)


@router.delete(
    "/{model_id:path}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=errors("model_not_found", "model_in_use", "model_not_deletable"),
)
async def delete_model(model_id: str, db: TenantDbDep) -> Response:
    """Delete an uploaded model and its unpacked files. 409 `model_in_use` while a queued or
    running job reads it; catalog models cannot be deleted."""
    removal = await db.run(service.delete_model, settings=get_settings(), model_id=model_id)
    await anyio.to_thread.run_sync(removal.apply, get_storage())  # after the commit
    return Response(status_code=status.HTTP_204_NO_CONTENT)
