"""Job creation, reads and cancellation; every status change goes through lifecycle."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta
from typing import Any, NoReturn, cast

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app import idempotency, queue
from app.auth.service import check_job_quota, retention_for
from app.config import Settings
from app.datasets.models import Dataset
from app.datasets.service import get_dataset
from app.errors import AppError, error_body, field_from_loc
from app.ids import new_id
from app.jobs import lifecycle, repository, usage, webhook_targets
from app.jobs.models import Job
from app.jobs.schemas import (
    CheckpointPublic,
    JobCreate,
    JobError,
    JobPublic,
    MetricsSeries,
    Progress,
    StepMetrics,
    WebhookDeliveryPublic,
)
from app.keys import job_prefix
from app.locks import RowLock
from app.pagination import Page
from app.storage import Removal, Storage
from app.teachers import catalog
from app.teachers import repository as teachers_repository
from contract.config import DEFAULT_STUDENT_WHY, DistillConfig, StudentConfig
from contract.vocab import TERMINAL, JobStatus, JobStatusName, Task

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
        # shared lock: a delete of the model waits for this job's commit, then sees it
        model = teachers_repository.get(
            session, tenant_id=tenant_id, model_id=teacher, lock="share"
        )
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


def create_job(
    session: Session,
    *,
    settings: Settings,
    tenant_id: str,
    request: JobCreate,
    idempotency_key: str | None = None,
) -> JobPublic | idempotency.Replay:
    """Validate, record and queue a job; with a key, a retry gets the first answer.

    The one service that commits: its answer depends on whether the broker took the job, and
    that is known only after the commit (the message waits for it in app.queue's outbox)."""
    if idempotency_key and (
        replay := idempotency.begin(
            session,
            tenant_id=tenant_id,
            key=idempotency_key,
            endpoint="POST /v1/jobs",
            fingerprint=idempotency.request_hash(request.model_dump(mode="json")),
        )
    ):
        return _with_secret(session, tenant_id, replay)
    job = _new_job(session, settings=settings, tenant_id=tenant_id, request=request)
    data = {"task": job.config["task"], "teacher": job.teacher}
    if "student" not in request.model_fields_set:
        data["student_choice"] = DEFAULT_STUDENT_WHY
    lifecycle.queue(session, job, data=data)
    public = to_public(job)
    if idempotency_key:  # the answer a retry replays; without a key nothing needs it
        # without the secret: the key's row keeps the answer for 24 h, the job row keeps the
        # secret (and the replay takes it from there)
        _answer(session, tenant_id, idempotency_key, 201, public.model_dump(mode="json"))
    public = public.model_copy(update={"webhook_secret": job.webhook_secret})
    session.commit()
    if queue.Message(queue.RUN_JOB_TASK, job.id) in queue.unsent(session):
        _fail_unqueued(session, job, tenant_id=tenant_id, idempotency_key=idempotency_key)
    return public


def _with_secret(
    session: Session, tenant_id: str, replay: idempotency.Replay
) -> idempotency.Replay:
    """The replayed 201 as first answered: its webhook secret read back from the job row."""
    job_id = replay.body.get("id")
    if replay.status_code != 201 or not isinstance(job_id, str):
        return replay
    job = repository.get(session, tenant_id=tenant_id, job_id=job_id)
    if job is None or not job.webhook_secret:
        return replay
    return idempotency.Replay(
        replay.status_code, {**replay.body, "webhook_secret": job.webhook_secret}
    )


def _fail_unqueued(
    session: Session, job: Job, *, tenant_id: str, idempotency_key: str | None
) -> NoReturn:
    """The broker refused the new job: fail it, and make a retry with the same key see the
    503 rather than the 201 recorded with the job."""
    error = AppError(
        "queue_unavailable",
        "the job queue is unreachable; the job was not started, try again",
        503,
    )
    lifecycle.fail(
        session,
        job,
        code=error.code,
        message="the job queue is unreachable",
        expect=JobStatus.queued,
        notify=False,  # the caller hears it as this 503
    )
    _answer(session, tenant_id, idempotency_key, 503, error_body(error.code, error.message))
    session.commit()
    raise error


def _answer(
    session: Session, tenant_id: str, key: str | None, status_code: int, body: dict[str, Any]
) -> None:
    if key:
        idempotency.finish(
            session, tenant_id=tenant_id, key=key, status_code=status_code, body=body
        )


def _new_job(session: Session, *, settings: Settings, tenant_id: str, request: JobCreate) -> Job:
    """The job row the request asks for, every reference checked; not yet added."""
    check_job_quota(session, settings=settings, tenant_id=tenant_id)
    train = get_dataset(
        session, tenant_id=tenant_id, dataset_id=request.dataset, field="dataset", lock="share"
    )
    validation = None
    if request.validation_dataset is not None:
        validation = get_dataset(
            session,
            tenant_id=tenant_id,
            dataset_id=request.validation_dataset,
            field="validation_dataset",
            lock="share",
        )
    teacher_source, teacher_width = _teacher_source(
        session, settings=settings, tenant_id=tenant_id, teacher=request.teacher
    )
    _check_student_init(session, settings=settings, tenant_id=tenant_id, request=request)
    _check_webhook_url(request, settings=settings)
    task = request.task or TASK_FOR_LABELS[train.label_type]
    _check_datasets(task, train, validation)
    config = _resolved_config(request, task=task, train=train, teacher_width=teacher_width)
    return Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        teacher=request.teacher,
        init_from=_init_from(session, tenant_id=tenant_id, request=request),
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
    )


def _resolved_config(
    request: JobCreate, *, task: Task, train: Dataset, teacher_width: int | None
) -> DistillConfig:
    try:
        return DistillConfig(
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


def _init_from(session: Session, *, tenant_id: str, request: JobCreate) -> dict[str, Any] | None:
    """{"job", "step"}: the checkpoint another job saved, which this job's student starts from."""
    if request.init_from is None:
        return None
    source = get_job(
        session,
        tenant_id=tenant_id,
        job_id=request.init_from.job,
        field="init_from.job",
        lock="share",
    )
    saved = repository.checkpoints(session, job_id=source.id)
    if source.artifacts_expired_at is not None:
        raise AppError(
            "checkpoint_not_found",
            f"job '{source.id}': its checkpoint expired under the tenant's retention",
            422,
            field="init_from.job",
        )
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
    # the head count is no tensor's shape: the source's resolved config may name more heads
    # than its preset (a student sliced from its teacher), and the worker takes the checkpoint's
    if (
        theirs.dims()._replace(num_attention_heads=0)
        != request.student.dims()._replace(num_attention_heads=0)
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
    return {"job": source.id, "step": saved[-1].step}


def _check_webhook_url(request: JobCreate, *, settings: Settings) -> None:
    """What the URL itself shows; its name's addresses are checked again at every delivery."""
    if request.webhook_url is None:
        return
    problem = webhook_targets.url_problem(
        str(request.webhook_url), allow_private=settings.webhook_allow_private_networks
    )
    if problem is not None:
        raise AppError("webhook_url_forbidden", problem, 422, field="webhook_url")


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def get_job(
    session: Session,
    *,
    tenant_id: str,
    job_id: str,
    field: str | None = None,
    lock: RowLock = None,
) -> Job:
    job = repository.get(session, tenant_id=tenant_id, job_id=job_id, lock=lock)
    if job is None:
        raise AppError("job_not_found", f"no job '{job_id}'", 404, field=field)
    return job


def get_job_public(
    session: Session, *, settings: Settings, tenant_id: str, job_id: str
) -> JobPublic:
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    return to_public(
        job, retention_days=retention_for(session, settings=settings, tenant_id=tenant_id)
    )


def list_jobs_page(
    session: Session,
    *,
    settings: Settings,
    tenant_id: str,
    limit: int,
    after: str | None,
    status: str | None,
    created_after: datetime | None,
) -> Page[JobPublic]:
    rows = repository.page(
        session,
        tenant_id=tenant_id,
        limit=limit,
        after=after,
        status=status,
        created_after=created_after,
    )
    has_more = len(rows) > limit  # the repository reads one row past the page
    days = retention_for(session, settings=settings, tenant_id=tenant_id)
    data = [to_public(j, retention_days=days) for j in rows[:limit]]
    return Page(data=data, has_more=has_more, next_cursor=data[-1].id if has_more else None)


def cancel_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """Queued jobs end at once; running ones stop within about a second. Idempotent."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job.status != JobStatus.cancelled:
        if not lifecycle.cancel(session, job):
            lifecycle.request_cancel(session, job)  # running, or it started meanwhile
        session.refresh(job)
    if job.status in (JobStatus.succeeded, JobStatus.failed):
        raise AppError("job_not_cancellable", f"job '{job_id}' already {job.status}", 409)
    return job


def delete_job(session: Session, *, tenant_id: str, job_id: str) -> Removal:
    """Remove a finished job's rows (events, metrics, checkpoints, deliveries, artifacts); its
    stored objects go once the caller has committed. A queued or running job is refused with
    409 job_active rather than cancelled here: a running job stops only at its next step, and
    a delete that answered 204 before the worker let go would race the worker's last writes."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id, lock="update")
    if job.status not in TERMINAL:
        raise AppError(
            "job_active",
            f"job '{job_id}' is {job.status}; cancel it first (POST /v1/jobs/{job_id}/cancel) "
            "and delete it once it has ended",
            409,
        )
    usage.refuse_if_used(
        session,
        tenant_id=tenant_id,
        code="job_in_use",
        what=f"the checkpoint of job '{job_id}'",
        uses=lambda other: (other.init_from or {}).get("job") == job.id,
    )
    repository.delete_job(session, job.id)
    return Removal(prefixes=(job_prefix(tenant_id, job.id),))


def expires_at(job: Job, retention_days: int | None) -> datetime | None:
    if retention_days is None or job.finished_at is None or job.status not in TERMINAL:
        return None
    return job.finished_at + timedelta(days=retention_days)


def to_public(job: Job, *, retention_days: int | None = None) -> JobPublic:
    """`retention_days`: the tenant's (auth.service.retention_for); None shows no expiry."""
    config = job.config
    total = job.total_steps
    return JobPublic(
        id=job.id,
        status=cast(JobStatusName, job.status),  # only lifecycle writes it, from JobStatus
        stage=job.stage,
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
        expires_at=expires_at(job, retention_days),
        artifacts_expired_at=job.artifacts_expired_at,
    )


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


def list_checkpoints(
    session: Session, *, storage: Storage, tenant_id: str, job_id: str
) -> list[CheckpointPublic]:
    """Only the last checkpoint can seed another job: each save replaces the one before."""
    get_job(session, tenant_id=tenant_id, job_id=job_id)
    rows = repository.checkpoints(session, job_id=job_id)
    return [
        CheckpointPublic(
            step=c.step,
            stage=c.stage,
            size_bytes=c.size_bytes,
            losses=c.losses,
            created_at=c.created_at,
            available=i == len(rows) - 1 and _stored(storage, c.path),
        )
        for i, c in enumerate(rows)
    ]


def list_deliveries(
    session: Session, *, tenant_id: str, job_id: str, limit: int, after: str | None
) -> Page[WebhookDeliveryPublic]:
    """Oldest first; the cursor is the last row's id, so new attempts never shift a page."""
    get_job(session, tenant_id=tenant_id, job_id=job_id)
    rows = repository.deliveries_page(
        session, job_id=job_id, after=int(after) if after else None, limit=limit
    )
    has_more = len(rows) > limit  # the repository reads one row past the page
    data = [WebhookDeliveryPublic.model_validate(d) for d in rows[:limit]]
    return Page(
        data=data, has_more=has_more, next_cursor=str(rows[limit - 1].id) if has_more else None
    )


def _stored(storage: Storage, key: str) -> bool:
    try:
        return storage.stat(key) is not None
    except ValueError:  # a row from before checkpoints were stored by key holds a path
        return False
