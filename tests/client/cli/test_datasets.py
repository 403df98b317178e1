"""`distillery datasets` against the real app in process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.client.cli.invoke import run, run_json
from tests.factories import unique_dataset


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


def test_datasets_delete_prints_what_it_deleted(made: list[Any], tmp_path: Path) -> None:
    first = run_json("datasets", "upload", str(unique_dataset(tmp_path)))["id"]
    second = run_json("datasets", "upload", str(unique_dataset(tmp_path)))["id"]
    assert run_json("datasets", "delete", first) == {
        "id": first,
        "object": "dataset",
        "deleted": True,
    }
    assert f"deleted {second}" in run("datasets", "delete", second).stdout
    gone = run("datasets", "delete", first, code=1)
    assert "dataset_not_found" in gone.stderr and "Traceback" not in gone.output
