from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile, status
from fastapi.responses import JSONResponse

from app import idempotency
from app.auth.service import check_storage_quota, upload_limit
from app.config import get_settings
from app.db import SessionDep
from app.deps import TenantDep
from app.models import service
from app.models.schemas import ModelPublic
from app.openapi import errors
from app.pagination import AfterQuery, LimitQuery, Page
from app.storage import get_storage
from app.uploads import spool

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelPublic,
             responses=errors(409, 413, 422))
async def upload_model(session: SessionDep, tenant: TenantDep,
                       file: Annotated[UploadFile, File(
                           description=".zip or .tar.gz of a save_pretrained folder")],
                       idempotency_key: idempotency.KeyHeader = None) -> Any:
    """Upload a teacher: safetensors weights only, BERT model_type, no custom code."""
    settings = get_settings()
    upload = await spool(file, max_bytes=upload_limit(
        session, settings=settings, tenant_id=tenant, default=settings.max_model_bytes))
    try:
        if idempotency_key and (replay := idempotency.begin(
                session, tenant_id=tenant, key=idempotency_key, endpoint="POST /v1/models",
                fingerprint=idempotency.request_hash(upload.filename, upload.sha256))):
            return JSONResponse(replay.body, status_code=replay.status_code)
        check_storage_quota(session, settings=settings, tenant_id=tenant,
                            incoming_bytes=upload.size_bytes)
        model = service.create_model(session, storage=get_storage(), settings=settings,
                                     tenant_id=tenant, upload=upload)
    finally:
        upload.discard()
    public = service.to_public(model)
    if idempotency_key:
        idempotency.finish(session, tenant_id=tenant, key=idempotency_key, status_code=201,
                           body=public.model_dump(mode="json"))
    session.commit()
    return public


@router.get("", response_model=Page[ModelPublic])
def list_models(session: SessionDep, tenant: TenantDep, limit: LimitQuery = 20,
                after: AfterQuery = None) -> Page[ModelPublic]:
    """Uploaded models, newest first; the first page also lists the ready-made catalog."""
    rows, has_more = service.list_uploaded(session, tenant_id=tenant, limit=limit, after=after)
    data = [service.to_public(r) for r in rows]
    if after is None:
        data = service.catalog_models(get_settings()) + data
    return Page(data=data, has_more=has_more, next_cursor=rows[-1].id if has_more else None)


@router.get("/{model_id:path}", response_model=ModelPublic, responses=errors(404))
def get_model(model_id: str, session: SessionDep, tenant: TenantDep) -> ModelPublic:
    return service.get_model(session, settings=get_settings(), tenant_id=tenant,
                             model_id=model_id)
