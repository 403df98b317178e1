"""Every change of a job's status, and nothing else changes it (tests/jobs/test_lifecycle.py).

Each transition is named, checked against the one table of legal moves (`MOVES`), applied as
a compare-and-set on the row (with the caller's guards: the owning worker, a stale
heartbeat), writes its event, and defers what must follow the commit through `app.queue`:
sending the job to a worker, or sending its webhook. A transition returns True only for the
one caller whose guard matched; False means another worker or request got there first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, NamedTuple, get_args

from sqlalchemy.orm import Session

from app import queue as outbox
from app.base import utcnow
from app.ids import new_id
from app.jobs import repository
from app.jobs.models import Job, WebhookDelivery
from contract.vocab import EventLevel, EventType, JobStatus

Transition = Literal[
    "queue",
    "start",
    "take_over",
    "hand_back",
    "requeue",
    "resend",
    "request_cancel",
    "cancel",
    "confirm_cancel",
    "succeed",
    "fail",
]
TRANSITIONS: tuple[Transition, ...] = get_args(Transition)


class Move(NamedTuple):
    sources: frozenset[JobStatus]  # the statuses the compare-and-set accepts
    target: JobStatus


_Q, _R = JobStatus.queued, JobStatus.running

MOVES: dict[Transition, Move] = {
    "queue": Move(frozenset(), _Q),  # a new row: it comes from nowhere
    "start": Move(frozenset({_Q}), _R),
    "take_over": Move(frozenset({_R}), _R),  # its worker's heartbeat went stale
    "hand_back": Move(frozenset({_R}), _Q),  # its worker is shutting down (SIGTERM)
    "requeue": Move(frozenset({_R}), _Q),  # the reaper, for a worker that vanished
    "resend": Move(frozenset({_Q}), _Q),  # the reaper, for a message the broker lost
    "request_cancel": Move(frozenset({_R}), _R),  # its worker stops within about a second
    "cancel": Move(frozenset({_Q}), JobStatus.cancelled),
    "confirm_cancel": Move(frozenset({_R}), JobStatus.cancelled),
    "succeed": Move(frozenset({_R}), JobStatus.succeeded),
    "fail": Move(frozenset({_Q, _R}), JobStatus.failed),
    # Deleting a job is no move: only a terminal job may go (409 job_active otherwise), and it
    # leaves no row to hold a status (app/jobs/service.py delete_job).
}


class IllegalMove(Exception):
    """A transition asked from a status the table does not allow: a bug, not a race."""


def allowed(status: str, transition: Transition) -> bool:
    return JobStatus(status) in MOVES[transition].sources


def _move(
    session: Session,
    job: Job,
    transition: Transition,
    *,
    expect: JobStatus | None = None,
    owner: str | None = None,
    stale_before: datetime | None = None,
    **values: Any,
) -> bool:
    move = MOVES[transition]
    sources = move.sources if expect is None else frozenset({expect})
    if not sources or not sources <= move.sources:
        raise IllegalMove(f"'{transition}' cannot move a job from {expect or 'nowhere'}")
    return repository.transition(
        session,
        job.id,
        from_status=set(sources),
        to_status=move.target,
        owner=owner,
        heartbeat_before=stale_before,
        **values,
    )


def _event(
    session: Session,
    job: Job,
    type: EventType,
    message: str,
    data: dict[str, Any] | None = None,
    level: EventLevel = "info",
) -> None:
    repository.add_event(
        session,
        job_id=job.id,
        tenant_id=job.tenant_id,
        type=type,
        message=message,
        data=data or {},
        level=level,
    )


WEBHOOK_EVENTS = {
    JobStatus.succeeded: "job.succeeded",
    JobStatus.failed: "job.failed",
    JobStatus.cancelled: "job.cancelled",
}


def _notify(session: Session, job: Job, status: JobStatus) -> None:
    """The job's webhook, recorded as a pending delivery in the transaction that ends the job
    (at least once: a lost message, a refused enqueue or a worker killed after the commit
    leaves the row, which the reaper sends once it is overdue); its message follows the
    commit."""
    if not job.webhook_url:
        return
    message_id = new_id("msg")  # webhook-id: the same on every retry
    repository.add_delivery(
        session,
        WebhookDelivery(
            job_id=job.id,
            tenant_id=job.tenant_id,
            message_id=message_id,
            event_type=WEBHOOK_EVENTS[status],
            url=job.webhook_url,
            attempt=1,
            state="pending",
            due_at=utcnow(),
            succeeded=False,
        ),
    )
    outbox.defer(session, outbox.Message(outbox.WEBHOOK_TASK, job.id, message_id))


def queue(session: Session, job: Job, *, data: dict[str, Any]) -> Job:
    """Record a new job as queued; a worker hears of it once the row is committed."""
    job.status = MOVES["queue"].target
    job.enqueued_at = utcnow()
    repository.add(session, job)
    message = "job queued" + (f"; {data['student_choice']}" if "student_choice" in data else "")
    _event(session, job, "job_created", message, data)
    outbox.defer(session, outbox.Message(outbox.RUN_JOB_TASK, job.id))
    return job


def _claim(
    session: Session,
    job: Job,
    transition: Transition,
    *,
    worker: str,
    message: str,
    stale_before: datetime | None = None,
) -> bool:
    now = utcnow()
    if not _move(
        session,
        job,
        transition,
        stale_before=stale_before,
        worker=worker,
        heartbeat_at=now,
        started_at=job.started_at or now,
        attempts=Job.attempts + 1,
    ):
        return False
    data = {"worker": worker, "attempt": job.attempts + 1, "takeover": transition == "take_over"}
    _event(session, job, "job_started", message, data)
    return True


def start(session: Session, job: Job, *, worker: str) -> bool:
    """queued -> running, owned by `worker`."""
    return _claim(session, job, "start", worker=worker, message=f"started on {worker}")


def take_over(session: Session, job: Job, *, worker: str, stale_before: datetime) -> bool:
    """running -> running under a new owner, if the old one's heartbeat is older than
    `stale_before` (its worker died)."""
    message = f"taken over by {worker} after its worker went silent"
    return _claim(
        session, job, "take_over", worker=worker, message=message, stale_before=stale_before
    )


def hand_back(session: Session, job: Job, *, owner: str) -> bool:
    """running -> queued by its shutting-down worker, after its last checkpoint. Counted in
    `handed_back`: a voluntary hand-back loses nothing, so it is no attempt against the cap."""
    if not _move(
        session,
        job,
        "hand_back",
        owner=owner,
        worker=None,
        enqueued_at=utcnow(),
        handed_back=Job.handed_back + 1,
    ):
        return False
    _event(
        session,
        job,
        "job_requeued",
        "the worker is shutting down; checkpointed and handed back to the queue",
        {"reason": "worker_shutdown"},
        level="warning",
    )
    outbox.defer(session, outbox.Message(outbox.RUN_JOB_TASK, job.id))
    return True


def requeue(session: Session, job: Job, *, stale_before: datetime) -> bool:
    """running -> queued when its worker vanished (heartbeat older than `stale_before`)."""
    if not _move(
        session, job, "requeue", stale_before=stale_before, worker=None, enqueued_at=utcnow()
    ):
        return False
    _event(
        session,
        job,
        "job_requeued",
        "its worker went silent; queued again to resume from the last checkpoint",
        {"reason": "stale_heartbeat", "step": job.step},
        level="warning",
    )
    outbox.defer(session, outbox.Message(outbox.RUN_JOB_TASK, job.id))
    return True


def resend(session: Session, job: Job) -> bool:
    """queued -> queued with a fresh message, when the broker lost the first. No event: to
    the job's owner nothing happened."""
    if not _move(session, job, "resend", enqueued_at=utcnow()):
        return False
    outbox.defer(session, outbox.Message(outbox.RUN_JOB_TASK, job.id))
    return True


def cancel(session: Session, job: Job) -> bool:
    """queued -> cancelled, at once."""
    if not _move(session, job, "cancel", cancel_requested=True, finished_at=utcnow()):
        return False
    _event(session, job, "job_cancelled", "cancelled before it started")
    _notify(session, job, JobStatus.cancelled)
    return True


def request_cancel(session: Session, job: Job) -> bool:
    """A running job is asked to stop; its worker ends it with `confirm_cancel`."""
    if not _move(session, job, "request_cancel", cancel_requested=True):
        return False
    _event(session, job, "cancel_requested", "cancel requested; stopping within about a second")
    return True


def confirm_cancel(session: Session, job: Job, *, owner: str) -> bool:
    """running -> cancelled by its worker, which stopped at a step and kept its checkpoint."""
    if not _move(session, job, "confirm_cancel", owner=owner, finished_at=utcnow()):
        return False
    _event(session, job, "job_cancelled", "cancelled while running; the last checkpoint is kept")
    _notify(session, job, JobStatus.cancelled)
    return True


def succeed(session: Session, job: Job, *, owner: str, metrics: dict[str, Any]) -> bool:
    """running -> succeeded by its worker, with the final metrics."""
    if not _move(
        session,
        job,
        "succeed",
        owner=owner,
        metrics=metrics,
        stage="done",
        finished_at=utcnow(),
    ):
        return False
    _event(session, job, "job_succeeded", "student ready", {"metrics": metrics})
    _notify(session, job, JobStatus.succeeded)
    return True


def fail(
    session: Session,
    job: Job,
    *,
    code: str,
    message: str,
    expect: JobStatus | None = None,
    owner: str | None = None,
    stale_before: datetime | None = None,
    notify: bool = True,
) -> bool:
    """queued or running -> failed with `code`. `expect` narrows the statuses accepted to the
    one the caller saw; `notify=False` when the caller answers for it directly (a 503)."""
    if not _move(
        session,
        job,
        "fail",
        expect=expect,
        owner=owner,
        stale_before=stale_before,
        error_code=code,
        error_message=message,
        finished_at=utcnow(),
    ):
        return False
    _event(session, job, "job_failed", message, {"code": code}, level="error")
    if notify:
        _notify(session, job, JobStatus.failed)
    return True
