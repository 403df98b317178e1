"""The job lifecycle: one table of legal moves, and nothing but app/jobs/lifecycle.py writes a
job's status. Against the real database (rolled back) and the real Redis queue."""

from __future__ import annotations

import ast
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.jobs import lifecycle
from app.jobs.models import Job, JobEvent
from contract.vocab import TERMINAL, JobStatus
from tests.factories import TINY_SENTIMENT, queued_job_ids, zip_folder

ROOT = Path(__file__).resolve().parents[2]
LIFECYCLE = ROOT / "app" / "jobs" / "lifecycle.py"
REPOSITORY = ROOT / "app" / "jobs" / "repository.py"
_RAW_UPDATE = re.compile(r"update\s+jobs\b", re.IGNORECASE)


def status_writes(source: str, *, primitive: bool = False) -> list[int]:
    """Lines that change a job's status: a call of `transition`, `status=` (or a "status" key)
    passed to `.values()` or `Job()`, `x.status = ...` on anything but `self`, raw SQL that
    updates jobs. `primitive` allows the one `.values(status=...)` inside `def transition`."""
    tree = ast.parse(source)
    allowed: set[int] = set()
    if primitive:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "transition":
                allowed |= {n.lineno for n in ast.walk(node) if hasattr(n, "lineno")}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _writes_status(node):
            found.append(node.lineno)
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr == "status":
                    if not (isinstance(t.value, ast.Name) and t.value.id == "self"):
                        found.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _RAW_UPDATE.search(node.value):
                found.append(node.lineno)
    return sorted(line for line in found if line not in allowed)


def _writes_status(call: ast.Call) -> bool:
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    if name == "transition":
        return True
    if name not in ("values", "Job"):
        return False
    if any(k.arg == "status" for k in call.keywords):
        return True
    return any(
        isinstance(a, ast.Dict)
        and any(isinstance(k, ast.Constant) and k.value == "status" for k in a.keys)
        for a in call.args
    )


def test_only_the_lifecycle_writes_a_job_s_status() -> None:
    offenders = {}
    for path in sorted([*(ROOT / "app").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]):
        if path == LIFECYCLE:
            continue
        lines = status_writes(path.read_text(), primitive=path == REPOSITORY)
        if lines:
            offenders[str(path.relative_to(ROOT))] = lines
    assert offenders == {}, "a job's status changes only in app/jobs/lifecycle.py"
    assert status_writes(LIFECYCLE.read_text()), "the checker no longer sees the lifecycle"


@pytest.mark.parametrize(
    "snippet",
    [
        "repository.transition(s, job_id, from_status='queued', to_status='running')",
        "s.execute(update(Job).where(Job.id == i).values(status='failed'))",
        "s.execute(update(Job).values({'status': 'failed'}))",
        "session.add(Job(id='job_x', status='running'))",
        "job.status = JobStatus.cancelled",
        "s.execute(text(\"UPDATE jobs SET status = 'failed'\"))",
    ],
)
def test_the_checker_sees_every_way_to_write_a_status(snippet: str) -> None:
    assert status_writes(snippet) == [1]


def test_the_table_moves_only_to_known_statuses_and_never_out_of_an_end() -> None:
    assert set(lifecycle.MOVES) == set(lifecycle.TRANSITIONS)
    for name, move in lifecycle.MOVES.items():
        assert move.target in set(JobStatus), name
        assert not move.sources & TERMINAL, f"{name} would move a job that has ended"
    assert lifecycle.MOVES["queue"].sources == frozenset()  # only a new row is queued from nothing


@pytest.fixture()
def own_queue(monkeypatch: pytest.MonkeyPatch, queue: redis.Redis) -> Iterator[str]:
    """A job queue of this test's own: the e2e worker of this package may be listening on
    the shared one, and would take the messages this test looks for."""
    name = f"lifecycle-{uuid.uuid4().hex}"
    monkeypatch.setenv("DISTILLERY_QUEUE_NAME", name)
    get_settings.cache_clear()
    yield name
    queue.delete(name)
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture()
def job(client: TestClient, db_session: Session, tiny_teacher_dir: Path, own_queue: str) -> Job:
    """A queued job of the client's tenant (through the API, so through lifecycle.queue)."""
    content = (TINY_SENTIMENT / "train.jsonl").read_bytes()
    ds = client.post("/v1/datasets", files={"file": ("t.jsonl", content)}).json()["id"]
    archive = zip_folder(tiny_teacher_dir)
    teacher = client.post("/v1/models", files={"file": ("t.zip", archive)}).json()["id"]
    created = client.post("/v1/jobs", json={"teacher": teacher, "dataset": ds}).json()
    row = db_session.get(Job, created["id"])
    assert row is not None and row.status == "queued"
    return row


def _events(s: Session, job_id: str) -> list[str]:
    rows = s.scalars(select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    return list(rows)


def _status(s: Session, job: Job) -> str:
    s.refresh(job)
    return job.status


def test_an_illegal_move_is_refused_and_changes_nothing(db_session: Session, job: Job) -> None:
    s = db_session
    assert lifecycle.succeed(s, job, owner="nobody", metrics={}) is False  # queued: not running
    assert lifecycle.hand_back(s, job, owner="nobody") is False
    assert lifecycle.confirm_cancel(s, job, owner="nobody") is False
    assert _status(s, job) == "queued"
    assert _events(s, job.id) == ["job_created"]
    with pytest.raises(lifecycle.IllegalMove):  # a caller asking for a move the table lacks
        lifecycle.fail(s, job, code="x", message="x", expect=JobStatus.succeeded)


def test_an_ended_job_refuses_every_move(db_session: Session, job: Job) -> None:
    s = db_session
    assert lifecycle.start(s, job, worker="w1")
    assert lifecycle.succeed(s, job, owner="w1", metrics={"ok": 1})
    attempts: list[Any] = [
        lambda: lifecycle.start(s, job, worker="w2"),
        lambda: lifecycle.cancel(s, job),
        lambda: lifecycle.request_cancel(s, job),
        lambda: lifecycle.hand_back(s, job, owner="w1"),
        lambda: lifecycle.resend(s, job),
        lambda: lifecycle.fail(s, job, code="late", message="too late"),
    ]
    assert [attempt() for attempt in attempts] == [False] * len(attempts)
    assert _status(s, job) == "succeeded"
    assert _events(s, job.id) == ["job_created", "job_started", "job_succeeded"]


def test_a_guarded_move_needs_its_owner(db_session: Session, job: Job) -> None:
    s = db_session
    assert lifecycle.start(s, job, worker="owner")
    assert lifecycle.fail(s, job, code="x", message="x", owner="impostor") is False
    assert lifecycle.confirm_cancel(s, job, owner="owner") is True
    assert _status(s, job) == "cancelled"
    assert _events(s, job.id)[-1] == "job_cancelled"


def test_a_move_s_message_leaves_after_commit_and_never_after_rollback(
    db_session: Session, job: Job, queue: redis.Redis, own_queue: str
) -> None:
    s = db_session
    assert queued_job_ids(queue) == [job.id]  # the creation's own message
    queue.delete(own_queue)
    lifecycle.start(s, job, worker="w")
    assert lifecycle.hand_back(s, job, owner="w")
    s.rollback()  # the hand-back never happened: nobody is told
    assert queued_job_ids(queue) == []
    assert _status(s, job) == "queued"
    lifecycle.start(s, job, worker="w")
    assert lifecycle.hand_back(s, job, owner="w")
    assert queued_job_ids(queue) == []  # not before the commit
    s.commit()
    assert queued_job_ids(queue) == [job.id]
