"""Jobs and their event log. The job row is the truth about a run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.base import Base, utcnow
from contract.vocab import JobStatus


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued, index=True)
    stage: Mapped[str | None] = mapped_column(String(32))
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    teacher: Mapped[str] = mapped_column(String(255))
    teacher_source: Mapped[str] = mapped_column(String(16))
    # Plain ids, no foreign keys: a finished job keeps naming a dataset that was deleted since
    # (its history); a queued or running one keeps it from being deleted (app/deletion.py).
    dataset_id: Mapped[str] = mapped_column(String(40))
    validation_dataset_id: Mapped[str | None] = mapped_column(String(40))
    # The resolved, frozen DistillConfig as JSON: defaults filled, reproducible from the row.
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any] | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # {"job": "job_…", "step": int}: the checkpoint this job's student starts from
    init_from: Mapped[dict[str, Any] | None]
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Voluntary hand-backs (a worker's SIGTERM): claims that lost nothing, so the attempts cap
    # counts attempts - handed_back.
    handed_back: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Bytes under the job's checkpoints prefix in storage (artifacts count in their own rows);
    # the tenant's storage quota adds it up.
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Set by the retention sweep once the artifacts and checkpoints are gone; the row stays.
    artifacts_expired_at: Mapped[datetime | None]


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]]


class JobMetric(Base):
    """One optimizer step's loss components and learning rate: the series a page plots."""

    __tablename__ = "job_metrics"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    step: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(32))
    learning_rate: Mapped[float]
    losses: Mapped[dict[str, Any]]


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    step: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str | None] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(1024))
    losses: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One attempt to deliver one webhook message: pending (recorded with the job's end, or by
    the attempt before), sending (a worker holds it), then succeeded or failed."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    message_id: Mapped[str] = mapped_column(String(64))  # webhook-id: the same on every retry
    event_type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    succeeded: Mapped[bool]
    state: Mapped[str] = mapped_column(String(16), index=True, server_default="failed")
    # pending: the earliest it may be sent (an attempt's backoff); the reaper sends it once
    # its message is overdue
    due_at: Mapped[datetime | None]
    claimed_at: Mapped[datetime | None]  # sending: when a worker took it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
