from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models.models import Model


def add(session: Session, model: Model) -> Model:
    session.add(model)
    session.flush()
    return model


def get(session: Session, *, tenant_id: str, model_id: str) -> Model | None:
    return session.scalar(select(Model).where(Model.id == model_id, Model.tenant_id == tenant_id))


def page(session: Session, *, tenant_id: str, limit: int, after: str | None) -> Sequence[Model]:
    query = select(Model).where(Model.tenant_id == tenant_id)
    if after is not None:
        query = query.where(Model.id < after)
    return session.scalars(query.order_by(Model.id.desc()).limit(limit + 1)).all()
