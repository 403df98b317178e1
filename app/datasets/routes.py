from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile, status
from fastapi.responses import JSONResponse

from app import idempotency
from app.auth.service import check_storage_quota, upload_limit
from app.config import get_settings
from app.datasets import service
from app.datasets.schemas import DatasetPublic
from app.db import SessionDep
from app.deps import TenantDep
from app.openapi import errors
from app.pagination import AfterQuery, LimitQuery, Page
from app.storage import get_storage
from app.uploads import spool

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetPublic,
             responses=errors(409, 413, 422))
async def upload_dataset(session: SessionDep, tenant: TenantDep,
                         file: Annotated[UploadFile, File(
                             description="JSONL or CSV with text, optional text_pair, label")],
                         idempotency_key: idempotency.KeyHeader = None) -> Any:
    """Validate every row and store the dataset; a bad row is a 422 naming line and field."""
    settings = get_settings()
    upload = await spool(file, max_bytes=upload_limit(
        session, settings=settings, tenant_id=tenant, default=settings.max_dataset_bytes))
    try:
        if idempotency_key and (replay := idempotency.begin(
                session, tenant_id=tenant, key=idempotency_key, endpoint="POST /v1/datasets",
                fingerprint=idempotency.request_hash(upload.filename, upload.sha256))):
            return JSONResponse(replay.body, status_code=replay.status_code)
        check_storage_quota(session, settings=settings, tenant_id=tenant,
                            incoming_bytes=upload.size_bytes)
        dataset = service.create_dataset(session, storage=get_storage(), tenant_id=tenant,
                                         upload=upload)
    finally:
        upload.discard()
    public = DatasetPublic.model_validate(dataset)
    if idempotency_key:
        idempotency.finish(session, tenant_id=tenant, key=idempotency_key, status_code=201,
                           body=public.model_dump(mode="json"))
    session.commit()
    return public


@router.get("", response_model=Page[DatasetPublic])
def list_datasets(session: SessionDep, tenant: TenantDep, limit: LimitQuery = 20,
                  after: AfterQuery = None) -> Page[DatasetPublic]:
    rows, has_more = service.list_datasets(session, tenant_id=tenant, limit=limit, after=after)
    data = [DatasetPublic.model_validate(r) for r in rows]
    return Page(data=data, has_more=has_more, next_cursor=data[-1].id if has_more else None)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=errors(404))
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> DatasetPublic:
    return DatasetPublic.model_validate(
        service.get_dataset(session, tenant_id=tenant, dataset_id=dataset_id))
