"""Uploaded teacher models (the `models` table; `UploadedModel` to tell it from the ML model)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.base import Base, utcnow


class UploadedModel(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    model_type: Mapped[str] = mapped_column(String(64))
    num_parameters: Mapped[int] = mapped_column(BigInteger)
    num_layers: Mapped[int] = mapped_column(Integer)
    hidden_size: Mapped[int] = mapped_column(Integer)
    has_task_head: Mapped[bool]
    labels: Mapped[list[str]]
    config: Mapped[dict[str, Any]]
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # What storage holds (the unpacked folder as stored), which the quota counts; size_bytes is
    # the upload's own size.
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    storage_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
