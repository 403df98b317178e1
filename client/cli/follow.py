"""Following a job live: the event stream while it works, polling when it does not."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from client.cli import output
from client.errors import DistilleryError
from client.http import DistilleryClient
from client.resources import Event, Job


def follow(
    client: DistilleryClient,
    job_id: str,
    poll_interval: float,
    *,
    on_event: Callable[[Event], None],
    on_job: Callable[[Job], None],
    job: Job | None = None,
) -> Job:
    """Events from the SSE stream while it works, then polling; returns the ended job."""
    job = job or client.get_job(job_id)
    on_job(job)
    if job.ended:
        return job
    try:
        for event in client.stream_events(job_id):
            on_event(event)
    except DistilleryError as exc:
        # An older server without the stream, or one that keeps dropping it: poll instead.
        if exc.status in (401, 403):
            raise
    return client.wait(job_id, on_update=on_job, poll_interval=poll_interval)


def follow_with_progress(client: DistilleryClient, job_id: str, poll_interval: float) -> Job:
    """follow() behind a live bar: stage, step of total, last loss, elapsed time."""
    job = client.get_job(job_id)
    if job.ended:
        return job
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[stage]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        console=output.console(),
    ) as bar:
        task = bar.add_task(job_id, total=None, stage="queued", loss="")
        state = _BarState(bar, task)

        def on_event(event: Event) -> None:
            state.event(event)
            if event.type in ("stage_started", "job_started") or state.total is None:
                state.job(client.get_job(job_id))

        return follow(client, job_id, poll_interval, on_event=on_event, on_job=state.job, job=job)


@dataclass
class _BarState:
    bar: Progress
    task: TaskID
    total: int | None = None

    def job(self, job: Job) -> None:
        if job.progress.total_steps:
            self.total = job.progress.total_steps
        self.bar.update(
            self.task, stage=job.stage or job.status, total=self.total, completed=job.progress.step
        )

    def event(self, event: Event) -> None:
        data = event.data
        if event.type == "stage_started" and data.get("stage"):
            self.bar.update(self.task, stage=data["stage"])
        if isinstance(data.get("step"), int):
            self.bar.update(self.task, completed=data["step"])
        losses = data.get("losses")  # on loss and stage_finished events
        if isinstance(losses, dict) and isinstance(losses.get("total"), int | float):
            self.bar.update(self.task, loss=f"loss {float(losses['total']):.4f}")
        if event.type in ("evaluation", "stage_finished") or event.level in ("warning", "error"):
            self.bar.console.print(f"[dim]{output.when(event.created_at)}[/] {event.message}")
