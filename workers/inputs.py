"""What the engine reads, resolved from the job row into local files through storage: the
teacher, a model or another job's checkpoint to start the student from, and the datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.jobs import repository
from app.storage import Storage, download
from app.tables import Dataset, Job
from app.teachers import catalog
from app.teachers import repository as teachers_repository
from contract.config import StudentConfig
from contract.records import Example, read_jsonl
from workers import scratch
from workers.distill.errors import DistillError


@dataclass(frozen=True)
class Inputs:
    teacher: str  # a local folder, or a hub id that from_pretrained fetches
    train: list[Example]
    validation: list[Example] | None
    init_model: str | None = None
    init_checkpoint: Path | None = None


@dataclass(frozen=True)
class _Model:
    """Where a named model is: an uploaded one's storage prefix, a catalog folder on this
    machine, or neither (a hub id)."""

    name: str
    key: str | None = None
    folder: Path | None = None


@dataclass(frozen=True)
class _Plan:
    teacher: _Model
    train_key: str
    validation_key: str | None
    init_model: _Model | None
    init_checkpoint_key: str | None


def resolve(
    sessions: sessionmaker[Session], job: Job, *, storage: Storage, settings: Settings
) -> Inputs:
    """Read what the row names in one short transaction, then copy outside it."""
    with sessions() as s:
        plan = _plan(s, job, settings)
    init_checkpoint = None
    if plan.init_checkpoint_key is not None:
        init_checkpoint = _init_checkpoint(storage, plan.init_checkpoint_key, job, settings)
    return Inputs(
        teacher=_local(plan.teacher, storage, settings, missing="teacher_not_found"),
        train=_examples(storage, plan.train_key),
        validation=_examples(storage, plan.validation_key) if plan.validation_key else None,
        init_model=_local(plan.init_model, storage, settings, missing="model_not_found")
        if plan.init_model
        else None,
        init_checkpoint=init_checkpoint,
    )


def _plan(s: Session, job: Job, settings: Settings) -> _Plan:
    student = StudentConfig.model_validate(job.config["student"])
    init_model = None
    if student.init == "model" and student.init_model:
        init_model = _find_model(s, student.init_model, job.tenant_id, settings)
    teacher = (
        _Model(job.teacher)
        if job.teacher_source == "hub"
        else _find_model(s, job.teacher, job.tenant_id, settings)
    )
    if job.teacher_source != "hub" and teacher.key is None and teacher.folder is None:
        raise DistillError("teacher_not_found", f"catalog model '{job.teacher}' is gone")
    return _Plan(
        teacher=teacher,
        train_key=_dataset_key(s, job.dataset_id),
        validation_key=_dataset_key(s, job.validation_dataset_id)
        if job.validation_dataset_id
        else None,
        init_model=init_model,
        init_checkpoint_key=_checkpoint_key(s, job.init_from["job"]) if job.init_from else None,
    )


def _find_model(s: Session, name: str, tenant_id: str, settings: Settings) -> _Model:
    if name.startswith("mdl_"):
        model = teachers_repository.get(s, tenant_id=tenant_id, model_id=name)
        if model is None:
            raise DistillError("model_not_found", f"uploaded model '{name}' is gone")
        return _Model(name, key=model.storage_key)
    return _Model(name, folder=catalog.resolve(name, settings.model_dir))


def _local(model: _Model, storage: Storage, settings: Settings, *, missing: str) -> str:
    if model.key is None:
        return str(model.folder) if model.folder is not None else model.name
    folder = scratch.cached_folder(storage, model.key, settings)
    if folder is None:
        raise DistillError(missing, f"uploaded model '{model.name}' has no files left")
    return str(folder)


def _dataset_key(s: Session, dataset_id: str) -> str:
    dataset = s.get(Dataset, dataset_id)
    if dataset is None:
        raise DistillError("dataset_not_found", f"dataset '{dataset_id}' is gone")
    return dataset.storage_key


def _checkpoint_key(s: Session, source_job: str) -> str:
    saved = repository.checkpoints(s, job_id=source_job)
    if not saved:
        raise DistillError(
            "checkpoint_not_found", f"job '{source_job}' has no checkpoint left to start from"
        )
    return saved[-1].path  # the storage key of the file its last save replaced


def _init_checkpoint(storage: Storage, key: str, job: Job, settings: Settings) -> Path:
    """Into the job's own folder: a stable path on every run, which the engine fingerprints."""
    source = job.init_from["job"] if job.init_from else "?"
    try:
        target = scratch.job_folder(settings, job.id) / "init" / PurePosixPath(key).name
        return download(storage, key, target)
    except (FileNotFoundError, ValueError) as exc:  # gone, or a row that holds a path
        raise DistillError(
            "checkpoint_not_found", f"job '{source}' has no checkpoint left to start from"
        ) from exc


def _examples(storage: Storage, key: str) -> list[Example]:
    with storage.open(key) as f:
        return read_jsonl(f)
