from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.locks import RowLock, locked
from app.teachers.models import UploadedModel


def add(session: Session, model: UploadedModel) -> UploadedModel:
    session.add(model)
    session.flush()
    return model


def get(
    session: Session, *, tenant_id: str, model_id: str, lock: RowLock = None
) -> UploadedModel | None:
    query = select(UploadedModel).where(
        UploadedModel.id == model_id, UploadedModel.tenant_id == tenant_id
    )
    return session.scalar(locked(query, lock))


def delete(session: Session, model: UploadedModel) -> None:
    session.delete(model)
    session.flush()


def page(
    session: Session, *, tenant_id: str, limit: int, after: str | None
) -> Sequence[UploadedModel]:
    query = select(UploadedModel).where(UploadedModel.tenant_id == tenant_id)
    if after is not None:
        query = query.where(UploadedModel.id < after)
    return session.scalars(query.order_by(UploadedModel.id.desc()).limit(limit + 1)).all()
