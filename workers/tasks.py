"""Thin task wrappers: take a job id, call the runner."""

from __future__ import annotations

from celery import Task

from workers.celery_app import app


@app.task(name="distillery.run_job", bind=True)
def run_job(self: Task, job_id: str) -> None:
    from workers.runner import run_job as run  # torch loads in the worker process only

    run(job_id, worker=str(self.request.hostname or "worker"))
