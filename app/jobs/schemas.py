from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from contract.config import (
    DistillationConfig,
    ExportConfig,
    Hyperparameters,
    StudentConfig,
)
from contract.vocab import JobStatusName, Task


class InitFrom(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job: str = Field(min_length=1, max_length=64, description="a job whose checkpoint to use")


class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "teacher": "all-MiniLM-L6-v2",
                    "dataset": "ds_01jabc",
                    "student": {"preset": "tinybert-4l-312d"},
                    "hyperparameters": {"epochs": 3, "batch_size": 32},
                }
            ]
        },
    )

    teacher: str = Field(
        min_length=1, max_length=255, description="mdl_… id, catalog name, or Hugging Face hub id"
    )
    dataset: str = Field(min_length=1, max_length=64)
    validation_dataset: str | None = Field(default=None, min_length=1, max_length=64)
    task: Task | None = Field(
        default=None, description="inferred from the dataset's labels when omitted"
    )
    student: StudentConfig = Field(default_factory=StudentConfig)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    distillation: DistillationConfig = Field(default_factory=DistillationConfig)
    export: ExportConfig = Field(
        default_factory=ExportConfig,
        description="ONNX and int8 exports, and how many timed runs each latency figure takes",
    )
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    webhook_url: HttpUrl | None = Field(
        default=None,
        description="POSTed on job.succeeded, "
        "job.failed and job.cancelled, signed (Standard "
        "Webhooks)",
    )
    init_from: InitFrom | None = Field(
        default=None, description="start the student from another job's latest checkpoint"
    )


class Progress(BaseModel):
    step: int
    total_steps: int
    fraction: float


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    id: str
    object: Literal["distillation.job"] = "distillation.job"
    status: JobStatusName
    stage: str | None
    progress: Progress
    teacher: str
    teacher_source: str
    dataset: str
    validation_dataset: str | None
    task: str
    student: dict[str, Any]
    hyperparameters: dict[str, Any]
    distillation: dict[str, Any]
    export: dict[str, Any]
    seed: int
    metrics: dict[str, Any] | None
    error: JobError | None
    cancel_requested: bool
    attempts: int
    webhook_url: str | None
    # Returned only when the job is created: verify webhook signatures with it.
    webhook_secret: str | None = None
    init_from: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # When the retention sweep removes a finished job's artifacts and checkpoints (the row
    # stays); null while the job runs or when the tenant keeps them for ever.
    expires_at: datetime | None = None
    artifacts_expired_at: datetime | None = None


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    object: Literal["event"] = "event"
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any]


class StepMetrics(BaseModel):
    step: int
    stage: str
    learning_rate: float
    losses: dict[str, float]


class MetricsSeries(BaseModel):
    object: Literal["metrics"] = "metrics"
    job: str
    steps: list[StepMetrics]
    evaluations: list[dict[str, Any]]
    final: dict[str, Any] | None


class CheckpointPublic(BaseModel):
    object: Literal["checkpoint"] = "checkpoint"
    step: int
    stage: str | None
    size_bytes: int
    losses: dict[str, Any]
    created_at: datetime
    # The engine keeps its latest checkpoint on disk; earlier ones are history only.
    available: bool


class WebhookDeliveryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    object: Literal["webhook.delivery"] = "webhook.delivery"
    message_id: str
    event_type: str
    url: str
    attempt: int
    state: Literal["pending", "sending", "succeeded", "failed"]
    status_code: int | None
    error: str | None
    succeeded: bool
    created_at: datetime
