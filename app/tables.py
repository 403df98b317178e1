"""Import every ORM module so Base.metadata is complete (Alembic and tests use this)."""

from app.artifacts.models import Artifact
from app.auth.models import ApiKey, Tenant
from app.base import Base
from app.datasets.models import Dataset
from app.idempotency.models import IdempotencyKey
from app.jobs.models import Job, JobCheckpoint, JobEvent, JobMetric, WebhookDelivery
from app.teachers.models import UploadedModel

__all__ = [
    "ApiKey",
    "Artifact",
    "Base",
    "Dataset",
    "IdempotencyKey",
    "Job",
    "JobCheckpoint",
    "JobEvent",
    "JobMetric",
    "UploadedModel",
    "Tenant",
    "WebhookDelivery",
]
