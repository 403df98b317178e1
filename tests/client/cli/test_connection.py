"""The global options, and how an API error reaches the user: code and field, exit 1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.client.cli.invoke import run, run_json
from tests.factories import HUB_TEACHER, unique_dataset


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


def test_the_old_keys_command_names_the_admin_cli_and_stays_out_of_help() -> None:
    moved = run("keys", "create", "--tenant", "acme", code=2)
    assert "distillery-admin keys create --tenant acme" in moved.stderr
    assert "keys" not in run("--help").stdout
