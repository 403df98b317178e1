"""A finished run's files into storage: the student folder zipped, the ONNX files and the
engine's metrics file, each under the job's artifacts prefix with its size and sha256."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from app.artifacts import repository as artifacts_repository
from app.keys import artifact_key
from app.storage import Storage, StoredObject
from app.tables import Artifact
from workers.distill.trainer import RunResult

CONTENT_TYPES = {
    ".zip": "application/zip",
    ".onnx": "application/octet-stream",
    ".json": "application/json",
}


@dataclass(frozen=True)
class Uploaded:
    name: str
    stored: StoredObject


def upload(
    storage: Storage, result: RunResult, *, tenant_id: str, job_id: str, folder: Path
) -> list[Uploaded]:
    """Put every artifact; `folder` (the run's scratch) takes the zip on its way."""
    student_zip = folder / "student.zip"
    _zip_folder(result.export_dir, student_zip)
    return [
        Uploaded(path.name, storage.put_file(artifact_key(tenant_id, job_id, path.name), path))
        for path in (student_zip, result.metrics_file, *result.onnx_files)
    ]


def record(session: Session, uploaded: list[Uploaded], *, tenant_id: str, job_id: str) -> None:
    for item in uploaded:
        artifacts_repository.replace(
            session,
            Artifact(
                job_id=job_id,
                tenant_id=tenant_id,
                name=item.name,
                content_type=CONTENT_TYPES.get(Path(item.name).suffix, "application/octet-stream"),
                size_bytes=item.stored.size_bytes,
                sha256=item.stored.sha256,
                storage_key=item.stored.key,
            ),
        )


# Weights are stored as they are: deflate shrank the default job's student folder (safetensors
# and ONNX files) by 11% and took 5-6 s of a 3-minute job's 2 busy cores; text still deflates.
STORED_SUFFIXES = frozenset({".safetensors", ".onnx", ".bin", ".pt"})


def _zip_folder(folder: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            stored = path.suffix in STORED_SUFFIXES
            zf.write(
                path,
                path.relative_to(folder).as_posix(),
                compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED,
            )
