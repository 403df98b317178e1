"""`distillery jobs watch`: the event stream, the polling fallback, and a real job end to end."""

from __future__ import annotations

import json
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from app.main import create_app
from client import DistilleryClient
from tests.client.cli.invoke import run
from tests.client.proxy import Fault, FaultyProxy
from tests.factories import TINY_SENTIMENT, TINY_STUDENT
from tests.stray import cancel_stray_queued_jobs
from tests.workerproc import start_worker, stop_worker

FinishJob = Callable[..., None]


@pytest.mark.parametrize("as_json", [True, False])
def test_watch_follows_the_event_stream_until_the_job_ends(
    made: list[Any], api: DistilleryClient, job_id: str, as_json: bool
) -> None:
    # The stream stays open while the job is queued; cancelling it ends the stream.
    canceller = threading.Timer(0.5, api.cancel_job, args=[job_id])
    canceller.start()
    result = run("jobs", "watch", job_id, *(["--json"] if as_json else []), code=1)
    canceller.join()
    if not as_json:
        assert job_id in result.stdout and "cancelled" in result.stdout
        return
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [x.get("type") for x in lines[:-1]] == ["job_created", "job_cancelled"]
    assert lines[-1]["object"] == "distillation.job" and lines[-1]["status"] == "cancelled"


def test_watch_falls_back_to_polling_without_the_stream(
    proxy: FaultyProxy, api: DistilleryClient, job_id: str, api_key: str
) -> None:
    proxy.faults.append(Fault("404", "GET", f"/v1/jobs/{job_id}/events"))

    def cancel_once_falling_back() -> None:
        # Cancel only once the stream's 404 has been answered: the CLI asks for the stream
        # after it has read the job still queued, so every later read of the job is a poll.
        # (Cancelling on the first read of the job raced that read: the proxy records a
        # request before it forwards it, so the read could already see the job cancelled.)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            seen.status == 404 for seen in proxy.requests("GET", f"/v1/jobs/{job_id}/events")
        ):
            time.sleep(0.01)
        api.cancel_job(job_id)

    canceller = threading.Thread(target=cancel_once_falling_back)
    canceller.start()
    result = run(
        "--base-url",
        proxy.url,
        "jobs",
        "watch",
        job_id,
        "--poll-interval",
        "0.05",
        env={"DISTILLERY_API_KEY": api_key},
        code=1,
    )
    canceller.join()
    assert "cancelled" in result.stdout
    assert len(proxy.requests("GET", f"/v1/jobs/{job_id}")) >= 2  # read once, then polled


def test_watch_exits_0_for_a_succeeded_job(
    made: list[Any], job_id: str, finish_job: FinishJob
) -> None:
    finish_job(job_id)
    result = run("jobs", "watch", job_id)
    assert "succeeded" in result.stdout and "metrics.student.accuracy" in result.stdout


@pytest.fixture()
def live_url(database: str, queue: Any) -> Iterator[str]:
    """The real app served by uvicorn on 127.0.0.1, for a real worker's job to stream from."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture()
def worker(tmp_path: Path) -> Iterator[None]:
    """A real worker for this one test only: later client tests expect queued jobs to stay
    queued."""
    cancel_stray_queued_jobs()
    proc = start_worker(tmp_path / "worker.log", name="cli-e2e")
    yield
    stop_worker(proc)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.usefixtures("worker")
def test_the_cli_runs_a_real_job_from_upload_to_download(
    live_url: str, api_key: str, tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    env = {"DISTILLERY_URL": live_url, "DISTILLERY_API_KEY": api_key}
    train, dev = (
        json.loads(
            run(
                "datasets", "upload", str(TINY_SENTIMENT / f"{split}.jsonl"), "--json", env=env
            ).stdout
        )["id"]
        for split in ("train", "dev")
    )
    teacher = json.loads(run("models", "upload", str(tiny_teacher_dir), "--json", env=env).stdout)[
        "id"
    ]
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"student": TINY_STUDENT}))
    job = json.loads(
        run(
            "jobs",
            "create",
            "--teacher",
            teacher,
            "--dataset",
            train,
            "--validation-dataset",
            dev,
            "--config",
            str(config),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--max-seq-length",
            "32",
            "--json",
            env=env,
        ).stdout
    )["id"]

    watched = run("jobs", "watch", job, env=env)  # exit 0: it succeeded
    assert "prediction_distill finished" in watched.stdout  # streamed while it ran
    assert "metrics.student.accuracy" in watched.stdout

    run("jobs", "download", job, "--output", str(tmp_path), env=env)
    with zipfile.ZipFile(tmp_path / "student.zip") as archive:
        assert "model.safetensors" in archive.namelist()
