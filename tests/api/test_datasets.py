from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

from tests.factories import TINY_SENTIMENT, jsonl_bytes


def upload(client: TestClient, name: str, content: bytes) -> dict:
    response = client.post("/v1/datasets", files={"file": (name, content)})
    return {"status": response.status_code, **response.json()}


def test_upload_jsonl_dataset_reports_rows_labels_and_hash(client: TestClient) -> None:
    content = (TINY_SENTIMENT / "train.jsonl").read_bytes()
    body = upload(client, "train.jsonl", content)
    assert body["status"] == 201
    assert body["id"].startswith("ds_")
    assert body["object"] == "dataset"
    assert body["format"] == "jsonl"
    assert body["num_rows"] == 96
    assert body["labels"] == ["neg", "pos"]
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    fetched = client.get(f"/v1/datasets/{body['id']}").json()
    assert fetched["num_rows"] == 96
    listed = client.get("/v1/datasets").json()
    assert listed["object"] == "list"
    assert [d["id"] for d in listed["data"]] == [body["id"]]


def test_upload_csv_with_text_pair(client: TestClient) -> None:
    csv = b'text,text_pair,label\n"a cat, sat",on the mat,yes\nthe dog,barked,no\nx,y,yes\np,q,no\n'
    body = upload(client, "pairs.csv", csv)
    assert body["status"] == 201
    assert body["format"] == "csv"
    assert body["has_text_pair"] is True
    assert body["labels"] == ["no", "yes"]


@pytest.mark.parametrize(
    ("content", "line", "field"),
    [
        (b'{"text": "fine", "label": "a"}\n{"label": "b"}\n', 2, "text"),
        (b'{"text": "fine", "label": "a"}\n{"text": "x"}\n', 2, "label"),
        (b'{"text": "fine", "label": "a"}\nnot json\n', 2, None),
        (b'{"text": "ok", "label": "a"}\n{"text": "\xff\xfe", "label": "b"}\n', 2, None),
        (b'{"text": "ok", "label": "a"}\n{"text": 7, "label": "b"}\n', 2, "text"),
    ],
)
def test_bad_row_is_422_naming_line_and_field(
    client: TestClient, content: bytes, line: int, field: str | None
) -> None:
    response = client.post("/v1/datasets", files={"file": ("bad.jsonl", content)})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "dataset_invalid"
    assert error["line"] == line
    assert f"line {line}" in error["message"]
    if field:
        assert error["field"] == field


def test_csv_without_text_column_is_rejected(client: TestClient) -> None:
    response = client.post("/v1/datasets", files={"file": ("x.csv", b"sentence,label\na,b\n")})
    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "dataset_invalid",
        "message": "line 1: the CSV header has no 'text' column",
        "field": "text",
        "line": 1,
    }


def test_single_class_and_too_few_rows_are_rejected(client: TestClient) -> None:
    one_class = jsonl_bytes({"text": f"t{i}", "label": "same"} for i in range(10))
    assert (
        client.post("/v1/datasets", files={"file": ("a.jsonl", one_class)}).json()["error"]["field"]
        == "label"
    )
    few = jsonl_bytes([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    response = client.post("/v1/datasets", files={"file": ("b.jsonl", few)})
    assert response.status_code == 422
    assert "at least" in response.json()["error"]["message"]


def test_empty_upload_and_missing_file(client: TestClient) -> None:
    response = client.post("/v1/datasets", files={"file": ("e.jsonl", b"")})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "file_empty"
    response = client.post("/v1/datasets")
    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "invalid_request",
        "message": "'file' is required",
        "field": "file",
    }


def test_unknown_dataset_is_404(client: TestClient) -> None:
    response = client.get("/v1/datasets/ds_nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "dataset_not_found"


def test_list_paginates_newest_first(client: TestClient) -> None:
    content = (TINY_SENTIMENT / "dev.jsonl").read_bytes()
    ids = [upload(client, f"d{i}.jsonl", content)["id"] for i in range(3)]
    first = client.get("/v1/datasets", params={"limit": 2}).json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    second = client.get("/v1/datasets", params={"limit": 2, "after": first["next_cursor"]}).json()
    assert [d["id"] for d in second["data"]] == [ids[0]]
    assert second["has_more"] is False and second["next_cursor"] is None
