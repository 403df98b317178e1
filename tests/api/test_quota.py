"""The storage quota counts what storage holds (unpacked models, datasets as stored, checkpoints,
artifacts) and holds under concurrent uploads (a real Postgres, two threads, two connections)."""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from app.auth import repository as auth_repository
from app.auth.models import Tenant
from app.auth.service import ensure_tenant
from app.config import get_settings
from app.datasets import service as datasets_service
from app.datasets.models import Dataset
from app.db import session_factory
from app.errors import AppError
from app.jobs.models import Job
from app.storage import get_storage
from app.uploads import SpooledUpload
from tests.factories import TINY_SENTIMENT, jsonl_bytes

HUB_TEACHER = "distillery-tests/any-hub-id"
HANG_GUARD_S = 60  # a hang guard, not a performance bound


def tenant_of(client: TestClient) -> str:
    return str(client.tenant)  # type: ignore[attr-defined]


def set_quota(db_session: Session, tenant: str, quota: int) -> None:
    db_session.get_one(Tenant, tenant).max_stored_bytes = quota
    db_session.commit()  # a savepoint release: the test's transaction still rolls back


def bomb_zip(teacher_dir: Path, padding: int) -> bytes:
    """A valid teacher plus `padding` zero bytes that deflate to almost nothing."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in teacher_dir.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(teacher_dir).as_posix())
        zf.writestr("notes.txt", b"\0" * padding)
    return buf.getvalue()


def unpacked_size(teacher_dir: Path, padding: int) -> int:
    return padding + sum(p.stat().st_size for p in teacher_dir.rglob("*") if p.is_file())


def test_a_model_counts_its_unpacked_bytes_not_its_archive(
    client: TestClient, db_session: Session, tiny_teacher_dir: Path
) -> None:
    padding = 8 * 1024 * 1024
    archive = bomb_zip(tiny_teacher_dir, padding)
    unpacked = unpacked_size(tiny_teacher_dir, padding)
    assert len(archive) * 4 < unpacked
    set_quota(db_session, tenant_of(client), len(archive) + 4096)  # room for the archive only
    response = client.post("/v1/models", files={"file": ("t.zip", archive)})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "storage_quota_exceeded"
    assert f"({unpacked} bytes as stored)" in error["message"]
    for route in ("DELETE /v1/datasets/{id}", "DELETE /v1/models/{id}", "DELETE /v1/jobs/{id}"):
        assert route in error["message"]
    assert get_storage().list(f"tenants/{tenant_of(client)}/models") == []

    set_quota(db_session, tenant_of(client), unpacked + 4096)
    response = client.post("/v1/models", files={"file": ("t.zip", archive)})
    assert response.status_code == 201, response.text
    stored = get_storage().list(f"tenants/{tenant_of(client)}/models/{response.json()['id']}")
    assert auth_repository.stored_bytes(db_session, tenant_of(client)) == sum(
        o.size_bytes for o in stored
    )


def test_a_dataset_counts_its_bytes_as_stored(client: TestClient, db_session: Session) -> None:
    # CSV grows as JSONL (every row gains its keys): what is stored is what counts.
    csv = "text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(200))
    response = client.post("/v1/datasets", files={"file": ("d.csv", csv.encode())})
    assert response.status_code == 201, response.text
    [stored] = get_storage().list(f"tenants/{tenant_of(client)}/datasets/{response.json()['id']}")
    assert stored.size_bytes > len(csv)
    assert response.json()["size_bytes"] == len(csv)  # the upload's own size, as before
    assert auth_repository.stored_bytes(db_session, tenant_of(client)) == stored.size_bytes


def test_checkpoints_and_unexpired_artifacts_count(client: TestClient, db_session: Session) -> None:
    from tests.api.test_artifacts import store_artifact

    content = (TINY_SENTIMENT / "train.jsonl").read_bytes()
    ds = client.post("/v1/datasets", files={"file": ("t.jsonl", content)}).json()["id"]
    job = client.post("/v1/jobs", json={"teacher": HUB_TEACHER, "dataset": ds}).json()["id"]
    tenant = tenant_of(client)
    before = auth_repository.stored_bytes(db_session, tenant)
    store_artifact(db_session, tenant, job, content=b"a" * 1000)
    db_session.execute(update(Job).where(Job.id == job).values(stored_bytes=5000))
    assert auth_repository.stored_bytes(db_session, tenant) == before + 6000
    db_session.execute(
        update(Job).where(Job.id == job).values(stored_bytes=0, artifacts_expired_at=func.now())
    )
    assert auth_repository.stored_bytes(db_session, tenant) == before


# --- the race: check, then insert


def canonical_rows(tag: str) -> bytes:
    return jsonl_bytes([{"text": f"row {i} {tag}", "label": "ab"[i % 2]} for i in range(20)])


def backend_waits_on_a_lock(pid: int) -> bool:
    with session_factory()() as s:
        return bool(
            s.scalar(
                text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            )
        )


def test_two_concurrent_uploads_cannot_both_pass_the_quota(tmp_path: Path) -> None:
    """Upload A has checked and inserted but not committed when upload B checks. Without a
    lock B sees A's bytes as not there, passes, and both commit: over quota. With the tenant
    row locked, B waits for A's commit, then counts A's bytes and is refused."""
    settings = get_settings()
    storage = get_storage()
    tenant = f"race-{uuid.uuid4().hex[:10]}"
    content = canonical_rows(tenant)
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with session_factory().begin() as s:
        ensure_tenant(s, tenant).max_stored_bytes = len(content) * 3 // 2  # room for one

    def upload() -> SpooledUpload:
        digest = hashlib.sha256(content).hexdigest()
        return SpooledUpload(path=path, size_bytes=len(content), sha256=digest, filename="d.jsonl")

    def create(session: Session) -> Dataset:
        return datasets_service.create_dataset(
            session, storage=storage, settings=settings, tenant_id=tenant, upload=upload()
        )

    first = session_factory()()
    second = session_factory()()
    outcome: dict[str, Any] = {}
    started, done = threading.Event(), threading.Event()

    def run_second() -> None:
        try:
            outcome["pid"] = second.scalar(text("SELECT pg_backend_pid()"))
            started.set()
            outcome["dataset"] = create(second)
            second.commit()
        except AppError as exc:
            outcome["error"] = exc
            second.rollback()
        finally:
            started.set()
            done.set()

    try:
        create(first)  # checked and inserted; the transaction stays open
        thread = threading.Thread(target=run_second)
        thread.start()
        assert started.wait(HANG_GUARD_S)
        # Until the second upload has either finished (no lock: it passed) or waits on the
        # tenant row's lock; polling the database's own view of it, not a timer.
        waited = _until(lambda: done.is_set() or backend_waits_on_a_lock(outcome["pid"]))
        assert waited, "the second upload neither finished nor waited on a lock"
        first.commit()
        thread.join(HANG_GUARD_S)
        assert not thread.is_alive()
    finally:
        first.close()
        second.close()

    error = outcome.get("error")
    assert isinstance(error, AppError), "both uploads passed the quota check"
    assert error.code == "storage_quota_exceeded"
    with session_factory()() as s:
        count = s.scalar(
            select(func.count()).select_from(Dataset).where(Dataset.tenant_id == tenant)
        )
    assert count == 1
    assert len(storage.list(f"tenants/{tenant}/datasets")) == 1  # no orphan file either


def _until(condition: Callable[[], bool]) -> bool:
    stop = threading.Event()
    for _ in range(HANG_GUARD_S * 20):
        if condition():
            return True
        stop.wait(0.05)
    return False
