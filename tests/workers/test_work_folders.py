"""A job's work folder in storage is trimmed when the job ends: only the last checkpoint file
(what a later `init_from` reads) stays, and the job's stored bytes say so."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.auth.service import create_key
from app.config import get_settings
from app.db import session_factory
from app.jobs.models import Job, JobCheckpoint
from app.keys import checkpoint_prefix
from app.main import create_app
from app.storage import get_storage
from app.tables import Dataset
from tests.factories import TINY_SENTIMENT, zip_folder
from workers import scratch
from workers.checkpoints import trim_finished
from workers.runner import run_job


@pytest.fixture()
def ended_job(api_key: str, tiny_teacher_dir: Path, queue: redis.Redis) -> Iterator[str]:
    """A committed queued job of a tenant of its own: the fair choice (fewest running jobs,
    never started first) runs it before what other tests left queued."""
    with session_factory().begin() as s:
        _, key = create_key(s, tenant_id=f"trim-{uuid.uuid4().hex[:10]}")
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as client:
        content = (TINY_SENTIMENT / "train.jsonl").read_bytes()
        ds = client.post("/v1/datasets", files={"file": ("t.jsonl", content)}).json()["id"]
        teacher = client.post(
            "/v1/models", files={"file": ("t.zip", zip_folder(tiny_teacher_dir))}
        ).json()["id"]
        job = client.post("/v1/jobs", json={"teacher": teacher, "dataset": ds}).json()
        yield str(job["id"])
        client.post(f"/v1/jobs/{job['id']}/cancel")  # nothing left queued for other tests


def prefix_of(job_id: str) -> str:
    with session_factory()() as s:
        return checkpoint_prefix(s.get_one(Job, job_id).tenant_id, job_id)


def put(key: str, size: int) -> None:
    get_storage().put(key, io.BytesIO(b"c" * size))


def leave_checkpoints(job_id: str, stage: str) -> str:
    """What a run leaves in storage: the last checkpoint, the fine-tuned teacher."""
    prefix = prefix_of(job_id)
    last = f"{prefix}/last.pt"
    put(last, 3000)
    put(f"{prefix}/teacher-finetuned/model.safetensors", 5000)
    put(f"{prefix}/teacher-finetuned/config.json", 100)
    with session_factory().begin() as s:
        s.add(
            JobCheckpoint(
                job_id=job_id,
                tenant_id=s.get_one(Job, job_id).tenant_id,
                step=4,
                stage=stage,
                size_bytes=3000,
                path=last,
                losses={},
            )
        )
        s.get_one(Job, job_id).stored_bytes = 8100
    return last


def stored_bytes_of(job_id: str) -> int:
    with session_factory()() as s:
        return s.get_one(Job, job_id).stored_bytes


def keys_under(prefix: str) -> list[str]:
    return [o.key for o in get_storage().list(prefix)]


def test_an_ended_job_keeps_only_its_last_checkpoint(ended_job: str) -> None:
    last = leave_checkpoints(ended_job, "distill")
    assert trim_finished(session_factory(), get_storage(), ended_job) == 3000
    assert keys_under(prefix_of(ended_job)) == [last]
    assert stored_bytes_of(ended_job) == 3000


def test_a_job_that_ended_before_its_student_existed_keeps_nothing(ended_job: str) -> None:
    leave_checkpoints(ended_job, "teacher_finetune")
    assert trim_finished(session_factory(), get_storage(), ended_job) == 0
    assert keys_under(prefix_of(ended_job)) == []
    assert stored_bytes_of(ended_job) == 0


def test_the_runner_trims_when_the_job_ends(ended_job: str) -> None:
    last = leave_checkpoints(ended_job, "distill")
    # The job fails as it reads its inputs: its dataset's file is gone from storage.
    with session_factory()() as s:
        job = s.get_one(Job, ended_job)
        key = s.get_one(Dataset, job.dataset_id).storage_key
    get_storage().delete(key)
    folder = scratch.job_folder(get_settings(), ended_job)
    folder.mkdir(parents=True, exist_ok=True)
    assert run_job(ended_job, worker="trimmer") == "ran"
    with session_factory()() as s:
        assert s.get_one(Job, ended_job).status == "failed"
    assert keys_under(prefix_of(ended_job)) == [last]
    assert stored_bytes_of(ended_job) == 3000
    assert not folder.exists()


def test_each_checkpoint_save_records_the_bytes_the_job_holds(
    ended_job: str, tmp_path: Path
) -> None:
    from workers.checkpoints import CheckpointMirror
    from workers.claim import claim
    from workers.distill.callbacks import Event
    from workers.distill.checkpoint import checkpoint_dir, teacher_dir
    from workers.progress import JobCallbacks

    job = claim(session_factory(), ended_job, worker="saver")
    assert job is not None
    mirror = CheckpointMirror(get_storage(), prefix_of(ended_job), tmp_path)
    teacher = teacher_dir(tmp_path)
    teacher.mkdir(parents=True)
    (teacher / "model.safetensors").write_bytes(b"t" * 5000)
    saved = checkpoint_dir(tmp_path) / "last.pt"
    saved.write_bytes(b"s" * 3000)
    callbacks = JobCallbacks(
        sessions=session_factory(),
        job_id=ended_job,
        tenant_id=job.tenant_id,
        owner=str(job.worker),
        settings=get_settings(),
        checkpoints=mirror,
    )
    callbacks.on_event(Event("checkpoint_saved", "saved", {"path": str(saved), "step": 2}))
    assert stored_bytes_of(ended_job) == 8000
