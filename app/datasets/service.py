"""Dataset uploads: validate every row, store the canonical JSONL, record the row."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.datasets import repository
from app.datasets.models import Dataset
from app.errors import AppError
from app.ids import new_id
from app.storage import Storage
from app.uploads import SpooledUpload
from contract.records import ParsedDataset, RecordError, parse_dataset, to_jsonl


def create_dataset(
    session: Session, *, storage: Storage, tenant_id: str, upload: SpooledUpload
) -> Dataset:
    try:
        with upload.path.open("rb") as f:
            parsed: ParsedDataset = parse_dataset(f, filename=upload.filename)
    except RecordError as exc:
        raise AppError(
            "dataset_invalid", str(exc), 422, field=exc.field or "file", line=exc.line
        ) from exc
    dataset_id = new_id("ds")
    key = f"tenants/{tenant_id}/datasets/{dataset_id}/data.jsonl"
    with tempfile.TemporaryFile() as canonical:  # row by row: never the whole file in memory
        for example in parsed.examples:
            canonical.write(to_jsonl([example]))
        canonical.seek(0)
        storage.put(key, canonical)
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
                storage_key=key,
            ),
        )
    except BaseException:
        storage.delete(key)  # no orphan file for a dataset that was not recorded
        raise


def get_dataset(
    session: Session, *, tenant_id: str, dataset_id: str, field: str | None = None
) -> Dataset:
    dataset = repository.get(session, tenant_id=tenant_id, dataset_id=dataset_id)
    if dataset is None:
        raise AppError("dataset_not_found", f"no dataset '{dataset_id}'", 404, field=field)
    return dataset


def list_datasets(
    session: Session, *, tenant_id: str, limit: int, after: str | None
) -> tuple[Sequence[Dataset], bool]:
    rows = repository.page(session, tenant_id=tenant_id, limit=limit, after=after)
    return rows[:limit], len(rows) > limit
