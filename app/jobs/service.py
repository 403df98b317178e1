"""Job creation, reads and cancellation; state changes are compare-and-set on status."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.auth.service import check_job_quota
from app.base import utcnow
from app.config import Settings
from app.datasets.models import Dataset
from app.datasets.service import get_dataset
from app.errors import AppError, field_from_loc
from app.ids import new_id
from app.jobs import repository
from app.jobs.models import Job, JobEvent
from app.jobs.schemas import (
    CheckpointPublic,
    JobCreate,
    JobError,
    JobPublic,
    MetricsSeries,
    Progress,
    StepMetrics,
    Task,
    WebhookDeliveryPublic,
)
from app.teachers import catalog
from app.teachers import repository as teachers_repository
from contract.config import DistillConfig, StudentConfig
from contract.vocab import JobStatus

TASK_FOR_LABELS: dict[str, Task] = {
    "categorical": "classification",
    "numeric": "regression",
    "none": "general",
}
LABELS_FOR_TASK = {
    "classification": {"categorical"},
    "regression": {"numeric"},
    "general": {"categorical", "numeric", "none"},
}


def _teacher_source(
    session: Session, *, settings: Settings, tenant_id: str, teacher: str
) -> tuple[str, int | None]:
    """Where the teacher comes from, and its width when this side can know it (a hub
    model's is known only once a worker has loaded it)."""
    if teacher.startswith("mdl_"):
        model = teachers_repository.get(session, tenant_id=tenant_id, model_id=teacher)
        if model is None:
            raise AppError(
                "teacher_not_found", f"no uploaded model '{teacher}'", 404, field="teacher"
            )
        return "upload", model.hidden_size
    if (folder := catalog.resolve(teacher, settings.model_dir)) is not None:
        return "catalog", catalog.hidden_size(folder)
    if catalog.HUB_ID.match(teacher):
        return "hub", None  # loaded by the worker with from_pretrained; fails there if unreachable
    raise AppError(
        "teacher_not_found",
        f"'{teacher}' is neither an uploaded model, a catalog name nor a Hugging Face model id",
        422,
        field="teacher",
    )


def _check_student_init(
    session: Session, *, settings: Settings, tenant_id: str, request: JobCreate
) -> None:
    """init_model names a model the way a teacher does; never a path on the worker."""
    student = request.student
    if student.init == "checkpoint":
        raise AppError(
            "invalid_request", "start from a checkpoint with 'init_from'", 422, field="student.init"
        )
    if student.init == "model" and student.init_model is not None:
        try:
            _teacher_source(
                session, settings=settings, tenant_id=tenant_id, teacher=student.init_model
            )
        except AppError as exc:
            raise AppError(
                exc.code.replace("teacher", "model"),
                exc.message,
                exc.status,
                field="student.init_model",
            ) from exc


def _check_datasets(task: str, train: Dataset, validation: Dataset | None) -> None:
    if train.label_type not in LABELS_FOR_TASK[task]:
        raise AppError(
            "dataset_incompatible",
            f"task '{task}' needs "
            f"{' or '.join(sorted(LABELS_FOR_TASK[task]))} labels; dataset "
            f"'{train.id}' has {train.label_type} labels",
            422,
            field="dataset",
        )
    if validation is None or task == "general":
        return
    if validation.label_type != train.label_type:
        raise AppError(
            "dataset_incompatible",
            "the validation dataset's labels are "
            f"{validation.label_type}, the training dataset's {train.label_type}",
            422,
            field="validation_dataset",
        )
    unknown = sorted(set(validation.labels) - set(train.labels))
    if unknown:
        raise AppError(
            "dataset_incompatible",
            f"validation labels {unknown} never occur in the training dataset",
            422,
            field="validation_dataset",
        )


def create_job(session: Session, *, settings: Settings, tenant_id: str, request: JobCreate) -> Job:
    check_job_quota(session, settings=settings, tenant_id=tenant_id)
    train = get_dataset(session, tenant_id=tenant_id, dataset_id=request.dataset, field="dataset")
    validation = None
    if request.validation_dataset is not None:
        validation = get_dataset(
            session,
            tenant_id=tenant_id,
            dataset_id=request.validation_dataset,
            field="validation_dataset",
        )
    teacher_source, teacher_width = _teacher_source(
        session, settings=settings, tenant_id=tenant_id, teacher=request.teacher
    )
    _check_student_init(session, settings=settings, tenant_id=tenant_id, request=request)
    task = request.task or TASK_FOR_LABELS[train.label_type]
    _check_datasets(task, train, validation)
    try:
        config = DistillConfig(
            task=task,
            student=request.student,
            hyperparameters=request.hyperparameters,
            distillation=request.distillation,
            export=request.export,
            seed=request.seed,
        ).resolved(num_train_examples=train.num_rows, teacher_width=teacher_width)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise AppError(
            "invalid_request",
            first.get("msg", "invalid configuration"),
            422,
            field=field_from_loc(first.get("loc", ())) or None,
        ) from exc
    init_from = None
    if request.init_from is not None:
        source = get_job(
            session, tenant_id=tenant_id, job_id=request.init_from.job, field="init_from.job"
        )
        saved = [c for c in repository.checkpoints(session, job_id=source.id)]
        if not saved:
            raise AppError(
                "checkpoint_not_found",
                f"job '{source.id}' has saved no checkpoint",
                422,
                field="init_from.job",
            )
        if saved[-1].stage in (None, "preparing", "teacher_finetune"):
            raise AppError(
                "checkpoint_not_found",
                f"job '{source.id}' stopped before its "
                "student existed (while the teacher was fine-tuned)",
                422,
                field="init_from.job",
            )
        theirs = StudentConfig.model_validate(source.config["student"])
        if (
            theirs.dims() != request.student.dims()
            or theirs.trim_vocab
            or request.student.trim_vocab
        ):
            raise AppError(
                "checkpoint_incompatible",
                f"job '{source.id}' trained a student "
                f"shaped {tuple(theirs.dims())}; this job asks for "
                f"{tuple(request.student.dims())} (and neither may trim its vocab)",
                422,
                field="init_from.job",
            )
        init_from = {"job": source.id, "step": saved[-1].step}
    job = repository.add(
        session,
        Job(
            id=new_id("job"),
            tenant_id=tenant_id,
            status=JobStatus.queued,
            teacher=request.teacher,
            init_from=init_from,
            webhook_url=str(request.webhook_url) if request.webhook_url else None,
            webhook_secret=new_webhook_secret() if request.webhook_url else None,
            teacher_source=teacher_source,
            dataset_id=train.id,
            validation_dataset_id=validation.id if validation else None,
            config=config.model_dump(mode="json"),
            step=0,
            total_steps=0,
            attempts=0,
            cancel_requested=False,
            enqueued_at=utcnow(),
        ),
    )
    repository.add_event(
        session,
        job_id=job.id,
        tenant_id=tenant_id,
        type="job_created",
        message="job queued",
        data={"task": task, "teacher": request.teacher},
    )
    return job


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def get_job(session: Session, *, tenant_id: str, job_id: str, field: str | None = None) -> Job:
    job = repository.get(session, tenant_id=tenant_id, job_id=job_id)
    if job is None:
        raise AppError("job_not_found", f"no job '{job_id}'", 404, field=field)
    return job


def list_jobs(
    session: Session,
    *,
    tenant_id: str,
    limit: int,
    after: str | None,
    status: str | None,
    created_after: datetime | None,
) -> tuple[Sequence[Job], bool]:
    rows = repository.page(
        session,
        tenant_id=tenant_id,
        limit=limit,
        after=after,
        status=status,
        created_after=created_after,
    )
    return rows[:limit], len(rows) > limit


def fail_unqueued(session: Session, *, job_id: str, message: str) -> None:
    repository.transition(
        session,
        job_id,
        from_status=JobStatus.queued,
        to_status=JobStatus.failed,
        error_code="queue_unavailable",
        error_message=message,
        finished_at=utcnow(),
    )


def cancel_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """Queued jobs end at once; running ones stop at their next step. Idempotent."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job.status == JobStatus.cancelled:
        return job
    if job.status in (JobStatus.succeeded, JobStatus.failed):
        raise AppError("job_not_cancellable", f"job '{job_id}' already {job.status}", 409)
    now = utcnow()
    if repository.transition(
        session,
        job_id,
        from_status=JobStatus.queued,
        to_status=JobStatus.cancelled,
        cancel_requested=True,
        finished_at=now,
    ):
        repository.add_event(
            session,
            job_id=job_id,
            tenant_id=tenant_id,
            type="job_cancelled",
            message="cancelled before it started",
            data={},
        )
    elif repository.transition(
        session,
        job_id,
        from_status=JobStatus.running,
        to_status=JobStatus.running,
        cancel_requested=True,
    ):
        repository.add_event(
            session,
            job_id=job_id,
            tenant_id=tenant_id,
            type="cancel_requested",
            message="cancel requested; stopping at the next step",
            data={},
        )
    session.refresh(job)
    if job.status in (JobStatus.succeeded, JobStatus.failed):
        raise AppError("job_not_cancellable", f"job '{job_id}' already {job.status}", 409)
    return job


def to_public(job: Job) -> JobPublic:
    config = job.config
    total = job.total_steps
    return JobPublic(
        id=job.id,
        status=job.status,
        stage=job.stage,  # type: ignore[arg-type]
        progress=Progress(
            step=job.step, total_steps=total, fraction=round(job.step / total, 4) if total else 0.0
        ),
        teacher=job.teacher,
        teacher_source=job.teacher_source,
        dataset=job.dataset_id,
        validation_dataset=job.validation_dataset_id,
        task=config["task"],
        student=config["student"],
        hyperparameters=config["hyperparameters"],
        distillation=config["distillation"],
        export=config["export"],
        seed=config["seed"],
        metrics=job.metrics,
        error=JobError(code=job.error_code, message=job.error_message or "")
        if job.error_code
        else None,
        cancel_requested=job.cancel_requested,
        attempts=job.attempts,
        webhook_url=job.webhook_url,
        init_from=job.init_from,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def list_events(
    session: Session, *, tenant_id: str, job_id: str, after: int | None, limit: int
) -> tuple[Sequence[JobEvent], bool]:
    get_job(session, tenant_id=tenant_id, job_id=job_id)
    rows = repository.events_page(session, job_id=job_id, after=after, limit=limit + 1)
    return rows[:limit], len(rows) > limit


def metrics_series(session: Session, *, tenant_id: str, job_id: str) -> MetricsSeries:
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    # A resumed job repeats the steps after its last checkpoint: the latest row of a step wins.
    latest = {m.step: m for m in repository.metrics_series(session, job_id=job_id)}
    steps = [
        StepMetrics(step=m.step, stage=m.stage, learning_rate=m.learning_rate, losses=m.losses)
        for _, m in sorted(latest.items())
    ]
    evaluations = [
        {"created_at": e.created_at, **e.data}
        for e in repository.events_of_type(session, job_id=job_id, type="evaluation")
    ]
    return MetricsSeries(job=job.id, steps=steps, evaluations=evaluations, final=job.metrics)


def list_checkpoints(session: Session, *, tenant_id: str, job_id: str) -> list[CheckpointPublic]:
    get_job(session, tenant_id=tenant_id, job_id=job_id)
    rows = repository.checkpoints(session, job_id=job_id)
    return [
        CheckpointPublic(
            step=c.step,
            stage=c.stage,
            size_bytes=c.size_bytes,
            losses=c.losses,
            created_at=c.created_at,
            available=i == len(rows) - 1 and Path(c.path).is_file(),
        )
        for i, c in enumerate(rows)
    ]


def list_deliveries(
    session: Session, *, tenant_id: str, job_id: str
) -> list[WebhookDeliveryPublic]:
    get_job(session, tenant_id=tenant_id, job_id=job_id)
    return [
        WebhookDeliveryPublic.model_validate(d)
        for d in repository.deliveries(session, job_id=job_id)
    ]
