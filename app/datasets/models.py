from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.base import Base, utcnow


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))
    num_rows: Mapped[int] = mapped_column(Integer)
    label_type: Mapped[str] = mapped_column(String(16))
    labels: Mapped[list[str]]
    has_text_pair: Mapped[bool]
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # What storage holds (the canonical JSONL as stored), which the quota counts; size_bytes is
    # the upload's own size.
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    storage_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
