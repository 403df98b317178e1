"""The API's answers as typed objects. Unknown fields are kept (extra="allow"), so an older
client survives a newer server."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from client.errors import DistilleryError
from contract.vocab import TERMINAL, EventType

TERMINAL_STATUSES: frozenset[str] = frozenset(TERMINAL)
TERMINAL_EVENTS: frozenset[EventType] = frozenset({"job_succeeded", "job_failed", "job_cancelled"})


class _Resource(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Dataset(_Resource):
    id: str
    object: Literal["dataset"] = "dataset"
    filename: str
    format: str
    num_rows: int
    label_type: str
    labels: list[str]
    has_text_pair: bool
    sha256: str
    size_bytes: int
    created_at: datetime


class Model(_Resource):
    id: str
    object: Literal["model"] = "model"
    source: str
    filename: str | None = None
    model_type: str
    num_parameters: int
    num_layers: int
    hidden_size: int
    has_task_head: bool
    labels: list[str] = []
    created_at: datetime | None = None


class Progress(_Resource):
    step: int
    total_steps: int
    fraction: float


class JobError(_Resource):
    code: str
    message: str


class Job(_Resource):
    id: str
    object: Literal["distillation.job"] = "distillation.job"
    # str, not the enum: a status that a newer server adds must not break this client.
    status: str
    stage: str | None = None
    progress: Progress
    teacher: str
    dataset: str
    validation_dataset: str | None = None
    task: str
    student: dict[str, Any] = {}
    hyperparameters: dict[str, Any] = {}
    distillation: dict[str, Any] = {}
    seed: int | None = None
    metrics: dict[str, Any] | None = None
    error: JobError | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # When retention removes the artifacts and checkpoints (null: never, or not ended yet).
    expires_at: datetime | None = None
    artifacts_expired_at: datetime | None = None

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Event(_Resource):
    id: int
    object: Literal["event"] = "event"
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any] = {}


class WebhookDelivery(_Resource):
    """One attempt to deliver a job's webhook; `state` pending until a worker sends it."""

    object: Literal["webhook.delivery"] = "webhook.delivery"
    message_id: str
    event_type: str
    url: str
    attempt: int
    state: str = "failed"  # str, not a Literal: a state a newer server adds must not break this
    status_code: int | None = None
    error: str | None = None
    succeeded: bool
    created_at: datetime


class StepMetrics(_Resource):
    step: int
    stage: str | None = None
    losses: dict[str, float] = {}
    learning_rate: float | None = None


class Metrics(_Resource):
    object: Literal["metrics"] = "metrics"
    job: str
    steps: list[StepMetrics] = []
    evaluations: list[dict[str, Any]] = []
    final: dict[str, Any] | None = None


class Artifact(_Resource):
    object: Literal["artifact"] = "artifact"
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    created_at: datetime


class Deleted(_Resource):
    """What a delete answers on this side (the server's answer is an empty 204)."""

    id: str
    object: str  # "dataset", "model" or "distillation.job"
    deleted: Literal[True] = True


T = TypeVar("T", bound=BaseModel)


class Page(_Resource, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    next_cursor: str | None = None


def parse(model: type[T], data: Any, status: int | None = None) -> T:
    """`data` as a `model`; an answer of another shape raises DistilleryError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DistilleryError(
            status,
            "unexpected_response",
            f"the server's answer is not a {model.__name__}: {exc.errors()[0].get('msg')}",
        ) from exc
