from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Response, UploadFile, status

from app.config import get_settings
from app.datasets import service
from app.datasets.schemas import DatasetPublic
from app.deps import IdempotencyKeyHeader, SessionDep, TenantDbDep, TenantDep
from app.openapi import errors
from app.pagination import AfterQuery, LimitQuery, Page
from app.storage import get_storage
from app.uploads import handle_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    responses=errors(
        "idempotency_key_reused",
        "idempotency_key_in_progress",
        "file_too_large",
        "storage_quota_exceeded",
        "dataset_invalid",
        "file_empty",
        "invalid_request",
    ),
)
async def upload_dataset(
    session: SessionDep,
    tenant: TenantDep,
    file: Annotated[
        UploadFile, File(description="JSONL or CSV with text, optional text_pair, label")
    ],
    idempotency_key: IdempotencyKeyHeader = None,
) -> Any:
    """Validate every row and store the dataset; a bad row is a 422 naming line and field."""
    return await handle_upload(
        session,
        tenant=tenant,
        file=file,
        idempotency_key=idempotency_key,
        endpoint="POST /v1/datasets",
        max_bytes=get_settings().max_dataset_bytes,
        create=lambda upload: DatasetPublic.model_validate(
            service.create_dataset(
                session,
                storage=get_storage(),
                settings=get_settings(),
                tenant_id=tenant,
                upload=upload,
            )
        ),
    )


@router.get("", response_model=Page[DatasetPublic], responses=errors("invalid_request"))
def list_datasets(
    session: SessionDep, tenant: TenantDep, limit: LimitQuery = 20, after: AfterQuery = None
) -> Page[DatasetPublic]:
    rows, has_more = service.list_datasets(session, tenant_id=tenant, limit=limit, after=after)
    data = [DatasetPublic.model_validate(r) for r in rows]
    return Page(data=data, has_more=has_more, next_cursor=data[-1].id if has_more else None)


@router.get(
    "/{dataset_id}",
    response_model=DatasetPublic,
    responses=errors("dataset_not_found", "invalid_request"),
)
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> DatasetPublic:
    return DatasetPublic.model_validate(
        service.get_dataset(session, tenant_id=tenant, dataset_id=dataset_id)
    )


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=errors("dataset_not_found", "dataset_in_use"),
)
async def delete_dataset(dataset_id: str, db: TenantDbDep) -> Response:
    """Delete the dataset and its stored file. 409 `dataset_in_use` while a queued or running
    job reads it; finished jobs keep naming it."""
    removal = await db.run(service.delete_dataset, dataset_id=dataset_id)
    await anyio.to_thread.run_sync(removal.apply, get_storage())  # after the commit
    return Response(status_code=status.HTTP_204_NO_CONTENT)
