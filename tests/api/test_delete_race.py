"""A new job naming a dataset and the dataset's delete, at the same moment on real Postgres:
never both. The job's read takes a shared row lock, the delete an exclusive one."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.auth.service import ensure_tenant
from app.config import get_settings
from app.datasets import service as datasets_service
from app.db import session_factory
from app.errors import AppError
from app.jobs import lifecycle
from app.jobs import service as jobs_service
from app.jobs.schemas import JobCreate
from app.storage import get_storage
from app.uploads import SpooledUpload
from tests.factories import jsonl_bytes

HANG_GUARD_S = 60  # a hang guard, not a performance bound


def waits_on_a_lock(pid: int) -> bool:
    with session_factory()() as s:
        query = text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid")
        return bool(s.scalar(query, {"pid": pid}))


def until(condition: Callable[[], bool]) -> bool:
    pause = threading.Event()
    for _ in range(HANG_GUARD_S * 20):
        if condition():
            return True
        pause.wait(0.05)
    return False


def test_a_delete_waits_for_the_job_that_names_the_dataset_then_refuses(
    tmp_path: Path, queue: redis.Redis
) -> None:
    settings, storage = get_settings(), get_storage()
    tenant = f"race-{uuid.uuid4().hex[:10]}"
    content = jsonl_bytes([{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(20)])
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    upload = SpooledUpload(path, len(content), hashlib.sha256(content).hexdigest(), "d.jsonl")
    with session_factory().begin() as s:
        ensure_tenant(s, tenant)
        dataset = datasets_service.create_dataset(
            s, storage=storage, settings=settings, tenant_id=tenant, upload=upload
        ).id

    creating, deleting = session_factory()(), session_factory()()
    outcome: dict[str, Any] = {}
    started, done = threading.Event(), threading.Event()

    def delete(session: Session) -> None:
        try:
            outcome["pid"] = session.scalar(text("SELECT pg_backend_pid()"))
            started.set()
            datasets_service.delete_dataset(session, tenant_id=tenant, dataset_id=dataset)
            session.commit()
        except AppError as exc:
            outcome["error"] = exc
            session.rollback()
        finally:
            started.set()
            done.set()

    try:
        request = JobCreate(teacher="distillery-tests/any-hub-id", dataset=dataset)
        job = jobs_service._new_job(creating, settings=settings, tenant_id=tenant, request=request)
        lifecycle.queue(creating, job, data={})  # recorded, not yet committed
        thread = threading.Thread(target=delete, args=(deleting,))
        thread.start()
        assert started.wait(HANG_GUARD_S)
        assert until(lambda: done.is_set() or waits_on_a_lock(outcome["pid"]))
        creating.commit()
        thread.join(HANG_GUARD_S)
        assert not thread.is_alive()
    finally:
        creating.close()
        deleting.close()

    error = outcome.get("error")
    assert isinstance(error, AppError), "the dataset was deleted under a queued job"
    assert error.code == "dataset_in_use" and job.id in error.message
    with session_factory().begin() as s:
        jobs_service.cancel_job(s, tenant_id=tenant, job_id=job.id)  # nothing left queued
