"""`distillery jobs create/get/list/cancel/download` against the real app in process."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client import DistilleryClient
from tests.client.cli.invoke import run, run_json
from tests.factories import HUB_TEACHER, unique_dataset

FinishJob = Callable[..., None]


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


def test_jobs_download_writes_and_verifies_the_artifact(
    made: list[Any], job_id: str, tmp_path: Path, finish_job: FinishJob
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


def test_jobs_delete_asks_to_cancel_first(
    made: list[Any], api: DistilleryClient, dataset_id: str
) -> None:
    job_id = api.create_job(teacher=HUB_TEACHER, dataset=dataset_id).id
    refused = run("jobs", "delete", job_id, code=1)
    assert "job_active" in refused.stderr and "cancel" in refused.stderr
    run("jobs", "cancel", job_id)
    assert run_json("jobs", "delete", job_id) == {
        "id": job_id,
        "object": "distillation.job",
        "deleted": True,
    }
    assert "job_not_found" in run("jobs", "get", job_id, code=1).stderr
