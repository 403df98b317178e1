"""The API process stays light: it never imports torch or transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_api_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys; import app.main; app.main.create_app(); "
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_the_data_layer_a_worker_imports_loads_no_web_framework() -> None:
    """Workers use the tables, storage and errors; FastAPI and Starlette stay out of them."""
    code = (
        "import sys; import app.db, app.tables, app.storage, app.errors, app.idempotency; "
        "print(','.join(sorted(m for m in ('fastapi', 'starlette') if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


EMBEDDED_SMOKE = """
import sys
from pathlib import Path
from fastapi.testclient import TestClient
from app.devserver import local_api_key
from app.main import create_app

key = local_api_key(Path(sys.argv[2]))
assert local_api_key(Path(sys.argv[2])) == key  # made once, then reused
with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as client:
    data = open(sys.argv[1], "rb").read()
    response = client.post("/v1/datasets", files={"file": ("train.jsonl", data)})
    assert response.status_code == 201, response.text
    assert client.get("/v1/datasets").json()["data"][0]["num_rows"] == 96
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready", ready
print("ok")
"""


@pytest.mark.slow  # migrates a fresh SQLite database and starts the app in a new process
def test_embedded_default_serves_requests_in_a_fresh_process(tmp_path: Path) -> None:
    """SQLite + the SQLAlchemy broker, as `make run` starts it, with nothing pre-imported."""
    from tests.factories import TINY_SENTIMENT

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DISTILLERY_DATABASE_URL": f"sqlite:///{tmp_path}/d.db",
        "DISTILLERY_BROKER_URL": f"sqla+sqlite:///{tmp_path}/broker.db",
        "DISTILLERY_STORAGE_DIR": str(tmp_path / "storage"),
        "DISTILLERY_MODEL_DIR": str(tmp_path / "models"),
    }
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            EMBEDDED_SMOKE,
            str(TINY_SENTIMENT / "train.jsonl"),
            str(tmp_path / "key"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
