from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.datasets.models import Dataset
from app.locks import RowLock, locked


def add(session: Session, dataset: Dataset) -> Dataset:
    session.add(dataset)
    session.flush()
    return dataset


def get(
    session: Session, *, tenant_id: str, dataset_id: str, lock: RowLock = None
) -> Dataset | None:
    query = select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id)
    return session.scalar(locked(query, lock))


def delete(session: Session, dataset: Dataset) -> None:
    session.delete(dataset)
    session.flush()


def page(session: Session, *, tenant_id: str, limit: int, after: str | None) -> Sequence[Dataset]:
    """Newest first; ids are time-ordered, so `id < after` is a stable cursor."""
    query = select(Dataset).where(Dataset.tenant_id == tenant_id)
    if after is not None:
        query = query.where(Dataset.id < after)
    return session.scalars(query.order_by(Dataset.id.desc()).limit(limit + 1)).all()
