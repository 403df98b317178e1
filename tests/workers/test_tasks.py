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


def test_the_reaper_has_a_queue_and_a_worker_of_its_own() -> None:
    """Slow webhook receivers must never hold up crash recovery: the reaper's messages go to
    its own queue, and make run starts a worker (with the beat schedule) that consumes it."""
    from app.config import get_settings
    from app.devserver import worker_commands
    from app.queue import WEBHOOK_TASK
    from workers.celery_app import REAP_TASK, app

    settings = get_settings()
    assert settings.reaper_queue_name not in (settings.webhook_queue_name, settings.queue_name)
    router = app.amqp.router
    assert router.route({}, REAP_TASK)["queue"].name == settings.reaper_queue_name
    assert router.route({}, WEBHOOK_TASK)["queue"].name == settings.webhook_queue_name
    assert app.conf.beat_schedule["reap-stale-jobs"]["options"]["queue"] == (
        settings.reaper_queue_name
    )
    consumed = {c[c.index("-Q") + 1]: "--beat" in c for c in worker_commands(settings)}
    assert consumed == {
        settings.queue_name: False,
        settings.webhook_queue_name: False,
        settings.reaper_queue_name: True,
    }
