from __future__ import annotations

import hashlib
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app import cli
from app.client import DistilleryClient
from app.main import create_app
from tests.client.conftest import HUB_TEACHER, Fault, FaultyProxy, finish_job, unique_dataset
from tests.factories import TINY_SENTIMENT
from tests.jobs.conftest import TINY_STUDENT
from tests.stray import cancel_stray_queued_jobs
from tests.workerproc import start_worker, stop_worker

# Wide enough that rich never folds an id in a table.
runner = CliRunner(env={"COLUMNS": "200", "DISTILLERY_URL": None, "DISTILLERY_API_KEY": None})


@pytest.fixture()
def made(
    committing_client: TestClient, queue: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[tuple[str, str | None]]]:
    """Point the CLI at the real app in process; records (base_url, api_key) of each client."""
    calls: list[tuple[str, str | None]] = []

    def factory(base_url: str, api_key: str | None) -> DistilleryClient:
        calls.append((base_url, api_key))
        return DistilleryClient(base_url, api_key, http=committing_client, backoff=0.01)

    monkeypatch.setattr(cli, "client_factory", factory)
    yield calls


def run(*args: str, env: dict[str, str] | None = None, code: int = 0) -> Any:
    result = runner.invoke(cli.app, list(args), env=env)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def run_json(*args: str, code: int = 0) -> Any:
    return json.loads(run(*args, "--json", code=code).stdout)


def test_datasets_upload_then_list_as_json_and_as_a_table(made: list[Any], tmp_path: Path) -> None:
    dataset = run_json("datasets", "upload", str(unique_dataset(tmp_path)))
    assert dataset["id"].startswith("ds_") and dataset["num_rows"] == 8
    page = run_json("datasets", "list", "--limit", "1")
    assert page["object"] == "list" and [d["id"] for d in page["data"]] == [dataset["id"]]
    table = run("datasets", "list").stdout
    assert dataset["id"] in table and "categorical: neg, pos" in table


def test_list_all_follows_every_page(made: list[Any], tmp_path: Path) -> None:
    ids = [run_json("datasets", "upload", str(unique_dataset(tmp_path)))["id"] for _ in range(2)]
    page = run_json("datasets", "list", "--limit", "1", "--all")
    assert {d["id"] for d in page["data"]} >= set(ids)
    assert page["has_more"] is False
    assert f"--after {ids[1]}" in run("datasets", "list", "--limit", "1").stdout


def test_base_url_and_api_key_come_from_flags_or_the_environment(
    made: list[Any], api_key: str
) -> None:
    run("jobs", "list", env={"DISTILLERY_URL": "http://env:1", "DISTILLERY_API_KEY": api_key})
    result = run(
        "--base-url",
        "http://flag:2",
        "--api-key",
        "dk_wrong",
        "jobs",
        "list",
        env={"DISTILLERY_URL": "http://env:1", "DISTILLERY_API_KEY": api_key},
        code=1,
    )
    assert "unauthorized" in result.stderr  # the flag's key went out, and the server said no
    run("jobs", "list")
    assert made == [
        ("http://env:1", api_key),
        ("http://flag:2", "dk_wrong"),
        ("http://127.0.0.1:8000", None),
    ]


def test_models_upload_a_folder_then_list(made: list[Any], tiny_teacher_dir: Path) -> None:
    model = run_json("models", "upload", str(tiny_teacher_dir))
    assert model["id"].startswith("mdl_") and model["num_layers"] == 2
    assert model["id"] in [m["id"] for m in run_json("models", "list", "--limit", "100")["data"]]


def test_jobs_create_merges_flags_over_the_config_file(made: list[Any], tmp_path: Path) -> None:
    dataset = run_json("datasets", "upload", str(unique_dataset(tmp_path)))["id"]
    config = tmp_path / "job.json"
    config.write_text(
        json.dumps(
            {
                "teacher": HUB_TEACHER,
                "dataset": dataset,
                "seed": 3,
                "hyperparameters": {"epochs": 5, "batch_size": 8},
            }
        )
    )
    job = run_json(
        "jobs",
        "create",
        "--config",
        str(config),
        "--epochs",
        "2",
        "--max-seq-length",
        "64",
        "--student-preset",
        "bert-2l-128d",
    )
    assert job["status"] == "queued" and job["seed"] == 3
    assert (
        job["hyperparameters"]["epochs"],
        job["hyperparameters"]["batch_size"],
        job["hyperparameters"]["max_seq_length"],
    ) == (2, 8, 64)
    assert job["student"]["preset"] == "bert-2l-128d"
    job = run_json("jobs", "create", "--teacher", HUB_TEACHER, "--dataset", dataset)
    assert job["dataset"] == dataset


def test_jobs_create_without_a_teacher_is_a_usage_error(made: list[Any]) -> None:
    result = run("jobs", "create", "--dataset", "ds_x", code=2)
    assert "--teacher" in result.stderr
    assert made == []  # refused before any request


def test_api_errors_print_code_and_field_and_exit_1(made: list[Any], tmp_path: Path) -> None:
    dataset = run_json("datasets", "upload", str(unique_dataset(tmp_path)))["id"]
    result = run(
        "jobs", "create", "--teacher", HUB_TEACHER, "--dataset", dataset, "--epochs", "0", code=1
    )
    assert "invalid_request" in result.stderr
    assert "(field hyperparameters.epochs)" in result.stderr
    assert "Traceback" not in result.output
    result = run("jobs", "get", "job_missing", "--json", code=1)
    assert json.loads(result.stderr)["error"]["code"] == "job_not_found"
    assert result.stdout == ""


def test_jobs_get_list_and_cancel(made: list[Any], api: DistilleryClient, dataset_id: str) -> None:
    job_id = api.create_job(teacher=HUB_TEACHER, dataset=dataset_id).id
    assert run_json("jobs", "get", job_id)["status"] == "queued"
    assert job_id in [
        j["id"] for j in run_json("jobs", "list", "--status", "queued", "--limit", "100")["data"]
    ]
    assert run_json("jobs", "cancel", job_id)["status"] == "cancelled"
    shown = run("jobs", "get", job_id).stdout
    assert job_id in shown and "cancelled" in shown
    assert job_id in run("jobs", "list", "--status", "cancelled", "--limit", "100").stdout


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
    made: list[Any], api: DistilleryClient, job_id: str
) -> None:
    finish_job(job_id)
    result = run("jobs", "watch", job_id)
    assert "succeeded" in result.stdout and "metrics.student.accuracy" in result.stdout


def test_jobs_download_writes_and_verifies_the_artifact(
    made: list[Any], job_id: str, tmp_path: Path
) -> None:
    content = b'{"student": {"accuracy": 0.875}}' * 1000
    finish_job(job_id, artifacts={"metrics.json": content, "student.zip": b"PK" * 10})
    out = run_json(
        "jobs",
        "download",
        job_id,
        "--artifact",
        "metrics.json",
        "--output",
        str(tmp_path / "m.json"),
    )
    assert out["path"] == str(tmp_path / "m.json")
    assert (
        hashlib.sha256((tmp_path / "m.json").read_bytes()).digest()
        == hashlib.sha256(content).digest()
    )
    result = run("jobs", "download", job_id, "-o", str(tmp_path))
    assert "sha256 verified" in result.stdout
    assert (tmp_path / "student.zip").read_bytes() == b"PK" * 10


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
