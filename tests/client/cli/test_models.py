"""`distillery models` against the real app in process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.client.cli.invoke import run, run_json


def test_models_upload_a_folder_then_list(made: list[Any], tiny_teacher_dir: Path) -> None:
    model = run_json("models", "upload", str(tiny_teacher_dir))
    assert model["id"].startswith("mdl_") and model["num_layers"] == 2
    assert model["id"] in [m["id"] for m in run_json("models", "list", "--limit", "100")["data"]]


def test_models_delete(made: list[Any], tiny_teacher_dir: Path) -> None:
    model = run_json("models", "upload", str(tiny_teacher_dir))["id"]
    assert f"deleted {model}" in run("models", "delete", model).stdout
    assert "model_not_found" in run("models", "delete", model, code=1).stderr
