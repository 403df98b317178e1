from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.artifacts import service
from app.artifacts.download import artifact_response
from app.artifacts.schemas import ArtifactPublic
from app.deps import SessionDep, TenantDep
from app.openapi import errors
from app.storage import get_storage

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
        ),
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "the requested byte range"},
    },
)
def download_artifact(
    job_id: str, name: str, request: Request, session: SessionDep, tenant: TenantDep
) -> StreamingResponse:
    """Streams from storage with Content-Length, ETag and HTTP Range support."""
    artifact = service.get_artifact(session, tenant_id=tenant, job_id=job_id, name=name)
    return artifact_response(get_storage(), artifact, request.headers)
