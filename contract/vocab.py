"""The words the API, the workers and the client share, each said once."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

# The literal is what pydantic renders into the OpenAPI document; the enum is what code compares.
JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}
)

Task = Literal["classification", "regression", "general"]
TASKS: tuple[Task, ...] = get_args(Task)

# A training stage, in the order a job runs them; "evaluate" and "export" close every job.
Stage = Literal[
    "preparing",
    "teacher_finetune",
    "general_distill",
    "intermediate_distill",
    "prediction_distill",
    "evaluate",
    "export",
    "done",
]
STAGES: tuple[Stage, ...] = get_args(Stage)

# Every event a job's log can hold: the lifecycle's own and the engine's.
EventType = Literal[
    "job_created",
    "job_started",
    "job_requeued",
    "job_succeeded",
    "job_failed",
    "job_cancelled",
    "cancel_requested",
    "stage_started",
    "stage_finished",
    "loss",
    "evaluation",
    "checkpoint_saved",
    "resumed",
    "warning",
]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
EventLevel = Literal["info", "warning", "error"]

# Encoders the engine loads, captures attention from and exports; the upload check uses the same.
SUPPORTED_MODEL_TYPES: frozenset[str] = frozenset({"bert"})

if {s.value for s in JobStatus} != set(get_args(JobStatusName)):  # pragma: no cover
    raise RuntimeError("JobStatus and JobStatusName disagree")
