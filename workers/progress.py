"""The engine's callbacks, backed by short transactions on the job row: progress, the per-step
series, events, checkpoints (mirrored to storage first), the resolved config, the stop poll,
and a heartbeat thread for the long phases between steps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from app.config import Settings
from app.jobs import repository
from app.jobs.models import JobCheckpoint, JobMetric
from contract.config import DistillConfig
from contract.vocab import JobStatus
from workers.checkpoints import CheckpointMirror
from workers.distill.trainer import Event, Progress

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRESS_WRITE_INTERVAL_S = 0.5  # cost: one UPDATE + one batched INSERT; the end is always written


def _transient(exc: BaseException) -> bool:
    """A lost or refused connection (a database restart), not a bad statement."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


class LostOwnership(Exception):  # noqa: N818 - a state, not a fault: the run ends quietly
    """Another worker took the job over (this one's heartbeat went stale): every write is
    refused and the run ends without touching the row."""


def check_timings(settings: Settings) -> None:
    """At worker start: a worker cut off from the database must give its job up (its retries
    end) before the job's heartbeat goes stale and another worker may take it over."""
    if settings.db_outage_tolerance_seconds >= settings.heartbeat_stale_seconds:
        raise ValueError(
            f"DISTILLERY_DB_OUTAGE_TOLERANCE_SECONDS ({settings.db_outage_tolerance_seconds:g}) "
            "must be shorter than DISTILLERY_HEARTBEAT_STALE_SECONDS "
            f"({settings.heartbeat_stale_seconds:g}): otherwise two workers can run one job"
        )


def db_retry(settings: Settings, fn: Callable[[], T]) -> T:
    """Run a short transaction, retrying while the database restarts (bounded)."""
    return retry(
        retry=retry_if_exception(_transient),
        stop=stop_after_delay(settings.db_outage_tolerance_seconds),
        wait=wait_exponential(multiplier=0.25, max=5),
        reraise=True,
        before_sleep=lambda s: log.warning(
            "database unavailable, retrying: %s", s.outcome and s.outcome.exception()
        ),
    )(fn)()


@dataclass
class JobCallbacks:
    """What the engine reports, written to the row that `owner` holds."""

    sessions: sessionmaker[Session]
    job_id: str
    tenant_id: str
    owner: str
    settings: Settings
    checkpoints: CheckpointMirror | None = None  # None: saves are not kept (a test's run)
    shutdown_requested: Callable[[], bool] = lambda: False
    stop_reason: str | None = None  # "cancel" | "shutdown" | "lost", once should_stop said so
    _stage: str | None = None
    _last_write: float = 0.0
    _pending: dict[str, Any] = field(default_factory=dict)
    _series: list[dict[str, Any]] = field(default_factory=list)
    _last_losses: dict[str, float] = field(default_factory=dict)

    def _write(self, fn: Callable[[Session], None]) -> None:
        """`fn` in one transaction that first proves, by row count, that this worker still
        owns the job: the UPDATE locks the row, so a takeover commits either before (and this
        write is refused, rolled back whole) or after it."""

        def transaction() -> None:
            with self.sessions.begin() as s:
                self._hold(s)
                fn(s)

        db_retry(self.settings, transaction)

    def _hold(self, s: Session) -> None:
        if not repository.beat(s, self.job_id, owner=self.owner):
            self.stop_reason = "lost"
            raise LostOwnership(f"job {self.job_id} is no longer owned by {self.owner}")

    def check_owner(self) -> None:
        """Raise LostOwnership unless this worker still owns the job: before a write to
        storage that the new owner's files could not survive."""
        self._write(lambda s: None)

    def _update(self, s: Session, **values: Any) -> None:
        if not repository.update_running(s, self.job_id, owner=self.owner, **values):
            self.stop_reason = "lost"
            raise LostOwnership(f"job {self.job_id} is no longer owned by {self.owner}")

    def on_config(self, config: DistillConfig) -> None:
        """The row keeps the configuration that actually ran (a hub teacher's width is known
        only now)."""
        resolved = config.model_dump(mode="json")
        self._write(lambda s: self._update(s, config=resolved))

    def on_progress(self, p: Progress) -> None:
        self._pending = {"stage": p.stage, "step": p.step, "total_steps": p.total_steps}
        if p.losses:  # stage markers (evaluate, export) carry no optimizer step
            self._last_losses = dict(p.losses)
            self._series.append(
                {
                    "step": p.step,
                    "stage": p.stage,
                    "learning_rate": p.learning_rate,
                    "losses": dict(p.losses),
                }
            )
        now = time.monotonic()
        if p.stage != self._stage or now - self._last_write >= PROGRESS_WRITE_INTERVAL_S:
            self._stage = p.stage
            self.flush()

    def flush(self) -> None:
        """Progress and the buffered per-step series, in one short transaction."""
        if not self._pending and not self._series:
            return
        pending, series = self._pending, self._series

        def write(s: Session) -> None:
            if pending:
                self._update(s, **pending)
            # fresh rows each try: a failed flush must not leave them bound to a session
            rows = [JobMetric(job_id=self.job_id, tenant_id=self.tenant_id, **m) for m in series]
            repository.add_metrics(s, rows)

        self._write(write)
        self._last_write = time.monotonic()
        self._pending, self._series = {}, []

    def on_event(self, e: Event) -> None:
        # Every step up to a checkpoint is durable before the checkpoint is: a resumed run
        # re-trains (and re-records) only the steps after it, so the series has no hole.
        self.flush()
        data = dict(e.data)
        checkpoint: dict[str, Any] | None = None
        held = 0
        if e.type == "checkpoint_saved" and self.checkpoints is not None:
            self.check_owner()  # a stale owner must not overwrite the new owner's checkpoint
            stored = self.checkpoints.push(Path(data["path"]))
            data["path"] = stored.key  # the worker's scratch path means nothing to a reader
            held = self.checkpoints.stored_bytes()  # one listing per save: a few files
            checkpoint = {
                "job_id": self.job_id,
                "tenant_id": self.tenant_id,
                "step": int(data["step"]),
                "stage": self._stage,
                "path": stored.key,
                "losses": self._last_losses,
                "size_bytes": stored.size_bytes,
            }
        stage = data.get("stage") if e.type == "stage_started" else None

        def write(s: Session) -> None:
            repository.add_event(
                s,
                job_id=self.job_id,
                tenant_id=self.tenant_id,
                type=e.type,
                message=e.message,
                data=data,
                level=e.level,
            )
            if stage:
                self._update(s, stage=stage)
            if checkpoint is not None:  # a new row per try, as in flush
                repository.add_checkpoint(s, JobCheckpoint(**checkpoint))
                self._update(s, stored_bytes=held)

        self._write(write)
        if stage:
            self._stage = stage

    def should_stop(self) -> bool:
        """Polled every step: a cancel, a worker shutdown, or a lost claim stops the run."""
        if self.shutdown_requested():
            self.stop_reason = "shutdown"
            return True
        try:
            with self.sessions() as s:
                cancel, status, worker = repository.control_flags(s, self.job_id)
        except DBAPIError:
            log.warning("database unavailable; training on", exc_info=True)
            return False
        if status != JobStatus.running or worker != self.owner:
            self.stop_reason = "lost"
            return True
        if cancel:
            self.stop_reason = "cancel"
            return True
        return False


class Heartbeat(threading.Thread):
    """Keeps heartbeat_at fresh during long non-step phases (loading, evaluation, export)."""

    def __init__(
        self, sessions: sessionmaker[Session], job_id: str, owner: str, interval: float
    ) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.sessions, self.job_id, self.owner, self.interval = sessions, job_id, owner, interval
        self.stopped = threading.Event()

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopped.set()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                with self.sessions.begin() as s:
                    repository.beat(s, self.job_id, owner=self.owner)
            except DBAPIError:
                log.warning("heartbeat missed: database unavailable")
