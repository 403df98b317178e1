"""Dataset uploads: validate every row, store the canonical JSONL, record the row."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.auth.service import check_storage_quota
from app.config import Settings
from app.datasets import repository
from app.datasets.models import Dataset
from app.errors import AppError
from app.ids import new_id
from app.jobs import usage
from app.keys import dataset_key, dataset_prefix
from app.locks import RowLock
from app.storage import Removal, Storage
from app.uploads import SpooledUpload
from contract.records import ParsedDataset, RecordError, parse_dataset, to_jsonl


def create_dataset(
    session: Session, *, storage: Storage, settings: Settings, tenant_id: str, upload: SpooledUpload
) -> Dataset:
    try:
        with upload.path.open("rb") as f:
            parsed: ParsedDataset = parse_dataset(f, filename=upload.filename)
    except RecordError as exc:
        raise AppError(
            "dataset_invalid", str(exc), 422, field=exc.field or "file", line=exc.line
        ) from exc
    dataset_id = new_id("ds")
    key = dataset_key(tenant_id, dataset_id)
    with tempfile.TemporaryFile() as canonical:  # row by row: never the whole file in memory
        for example in parsed.examples:
            canonical.write(to_jsonl([example]))
        # What storage will hold (CSV grows as JSONL) is what the quota counts.
        check_storage_quota(
            session, settings=settings, tenant_id=tenant_id, incoming_bytes=canonical.tell()
        )
        canonical.seek(0)
        stored = storage.put(key, canonical)
    try:
        return repository.add(
            session,
            Dataset(
                id=dataset_id,
                tenant_id=tenant_id,
                filename=upload.filename,
                format=parsed.format,
                num_rows=parsed.num_rows,
                label_type=parsed.label_type,
                labels=parsed.labels,
                has_text_pair=parsed.has_text_pair,
                sha256=upload.sha256,
                size_bytes=upload.size_bytes,
                stored_bytes=stored.size_bytes,
                storage_key=key,
            ),
        )
    except BaseException:
        storage.delete(key)  # no orphan file for a dataset that was not recorded
        raise


def delete_dataset(session: Session, *, tenant_id: str, dataset_id: str) -> Removal:
    """Remove the row; its file goes once the caller has committed (the Removal). 409 while a
    queued or running job reads it; finished jobs keep naming it."""
    dataset = get_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id, lock="update")
    usage.refuse_if_used(
        session,
        tenant_id=tenant_id,
        code="dataset_in_use",
        what=f"dataset '{dataset_id}'",
        uses=lambda job: dataset.id in (job.dataset_id, job.validation_dataset_id),
    )
    repository.delete(session, dataset)
    return Removal(keys=(dataset.storage_key,), prefixes=(dataset_prefix(tenant_id, dataset.id),))


def get_dataset(
    session: Session,
    *,
    tenant_id: str,
    dataset_id: str,
    field: str | None = None,
    lock: RowLock = None,
) -> Dataset:
    """`lock="share"` for a job that will name it: a delete then waits for that job's commit."""
    dataset = repository.get(session, tenant_id=tenant_id, dataset_id=dataset_id, lock=lock)
    if dataset is None:
        raise AppError("dataset_not_found", f"no dataset '{dataset_id}'", 404, field=field)
    return dataset


def list_datasets(
    session: Session, *, tenant_id: str, limit: int, after: str | None
) -> tuple[Sequence[Dataset], bool]:
    rows = repository.page(session, tenant_id=tenant_id, limit=limit, after=after)
    return rows[:limit], len(rows) > limit
