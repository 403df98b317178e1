"""The training worker loads the engine as it starts; the webhook worker never does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The hook runs with the real Celery app, its queues selected as `celery worker -Q …` does.
PROBE = """
import sys
from types import SimpleNamespace
from app.config import get_settings
from workers.celery_app import app
from workers.tasks import _preload_engine

app.amqp.queues.select([sys.argv[1]])
_preload_engine(sender="probe", instance=SimpleNamespace(app=app))
print(",".join(m for m in ("torch", "transformers", "workers.runner") if m in sys.modules))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("queue", "loaded"),
    [("training", "torch,transformers,workers.runner"), ("webhooks", "")],
)
def test_only_a_training_worker_preloads_the_engine(queue: str, loaded: str) -> None:
    env = {"DISTILLERY_QUEUE_NAME": "training", "DISTILLERY_WEBHOOK_QUEUE_NAME": "webhooks"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, queue],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == loaded
