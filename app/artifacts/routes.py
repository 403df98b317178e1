from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.artifacts import repository
from app.artifacts.schemas import ArtifactPublic
from app.deps import SessionDep, TenantDep
from app.errors import AppError
from app.jobs.service import get_job
from app.openapi import errors
from app.storage import get_storage

router = APIRouter(prefix="/v1/jobs/{job_id}/artifacts", tags=["artifacts"])


@router.get("", response_model=list[ArtifactPublic], responses=errors(404))
def list_artifacts(job_id: str, session: SessionDep, tenant: TenantDep) -> list[ArtifactPublic]:
    get_job(session, tenant_id=tenant, job_id=job_id)
    return [
        ArtifactPublic.model_validate(a)
        for a in repository.list_for_job(session, tenant_id=tenant, job_id=job_id)
    ]


@router.get(
    "/{name}",
    response_class=FileResponse,
    responses={
        **errors(404, 410, 416),
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "the requested byte range"},
    },
)
def download_artifact(
    job_id: str, name: str, session: SessionDep, tenant: TenantDep
) -> FileResponse:
    """Streams from storage with Content-Length, ETag and HTTP Range support."""
    get_job(session, tenant_id=tenant, job_id=job_id)
    artifact = repository.get(session, tenant_id=tenant, job_id=job_id, name=name)
    if artifact is None:
        raise AppError("artifact_not_found", f"job '{job_id}' has no artifact '{name}'", 404)
    path = get_storage().local_path(artifact.storage_key)
    if not path.is_file():
        raise AppError(
            "artifact_missing",
            f"artifact '{name}' is recorded but its file is gone from storage",
            410,
        )
    return FileResponse(
        path,
        media_type=artifact.content_type,
        filename=name,
        headers={"ETag": f'"{artifact.sha256}"'},
    )
