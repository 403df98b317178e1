from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session

from app.artifacts import service
from app.artifacts.download import artifact_response
from app.artifacts.models import Artifact
from app.artifacts.schemas import ArtifactPublic
from app.deps import SessionDep, TenantDbDep, TenantDep
from app.openapi import errors
from app.storage import get_storage
from app.streams import Slotted, take_slot

router = APIRouter(prefix="/v1/jobs/{job_id}/artifacts", tags=["artifacts"])


@router.get(
    "", response_model=list[ArtifactPublic], responses=errors("job_not_found", "invalid_request")
)
def list_artifacts(job_id: str, session: SessionDep, tenant: TenantDep) -> list[ArtifactPublic]:
    rows = service.list_artifacts(session, tenant_id=tenant, job_id=job_id)
    return [ArtifactPublic.model_validate(a) for a in rows]


@router.get(
    "/{name}",
    response_class=StreamingResponse,
    responses={
        **errors(
            "job_not_found",
            "artifact_not_found",
            "artifact_missing",
            "artifact_expired",
            "range_not_satisfiable",
            "invalid_request",
            "too_many_streams",
        ),
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "the requested byte range"},
    },
)
async def download_artifact(job_id: str, name: str, request: Request, db: TenantDbDep) -> Response:
    """Streams from storage with Content-Length, ETag and HTTP Range support."""
    tenant, artifact = await db.read(_find, job_id=job_id, name=name)
    give_back = take_slot(tenant)  # before the file is opened
    try:
        response = await anyio.to_thread.run_sync(
            artifact_response, get_storage(), artifact, request.headers
        )
    except BaseException:
        give_back()
        raise
    return Slotted(response, give_back)


def _find(session: Session, *, tenant_id: str, job_id: str, name: str) -> tuple[str, Artifact]:
    """The tenant and its artifact; the session closes before the download starts."""
    return tenant_id, service.get_artifact(session, tenant_id=tenant_id, job_id=job_id, name=name)
