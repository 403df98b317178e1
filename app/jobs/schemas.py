from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.distill.config import DistillationConfig, Hyperparameters, StudentConfig

Task = Literal["classification", "regression", "general"]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "teacher": "all-MiniLM-L6-v2", "dataset": "ds_01jabc", "student": {
            "preset": "tinybert-4l-312d"}, "hyperparameters": {"epochs": 3, "batch_size": 32}}]})

    teacher: str = Field(min_length=1, max_length=255,
                         description="mdl_… id, catalog name, or Hugging Face hub id")
    dataset: str = Field(min_length=1, max_length=64)
    validation_dataset: str | None = Field(default=None, min_length=1, max_length=64)
    task: Task | None = Field(default=None, description="inferred from the dataset's labels "
                              "when omitted")
    student: StudentConfig = Field(default_factory=StudentConfig)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    distillation: DistillationConfig = Field(default_factory=DistillationConfig)
    seed: int = Field(default=42, ge=0, le=2**31 - 1)


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
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
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
    seed: int
    metrics: dict[str, Any] | None
    error: JobError | None
    cancel_requested: bool
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
