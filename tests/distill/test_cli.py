import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import TINY_SENTIMENT

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cli_runs_a_tiny_job(teacher_dir, tmp_path) -> None:
    lines = (TINY_SENTIMENT / "train.jsonl").read_text().splitlines()[:24]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    job = {
        "teacher": str(teacher_dir),
        "train": "train.jsonl",
        "workdir": "out",
        "config": {
            "student": {"preset": "bert-2l-128d"},
            "hyperparameters": {"epochs": 1, "batch_size": 8},
            "export": {"onnx": False, "latency_runs": 1},
            "validation_fraction": 0.25,
        },
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.run(
        [sys.executable, "-m", "workers.distill", "run", str(tmp_path / "job.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert Path(out["export_dir"]) == tmp_path / "out" / "export"
    assert "accuracy" in out["metrics"]["student"]
    assert "[prediction_distill]" in proc.stderr


def test_cli_reports_config_errors_with_their_field(tmp_path) -> None:
    (tmp_path / "job.json").write_text(
        json.dumps(
            {"teacher": "x", "train": "t.jsonl", "config": {"hyperparameters": {"batch_size": 0}}}
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "workers.distill", "run", str(tmp_path / "job.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "config.hyperparameters.batch_size" in proc.stderr
