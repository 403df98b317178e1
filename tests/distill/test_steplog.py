"""Step reports held on the device until a flush, then delivered every one, in order."""

import math

import pytest
import torch

from tests.factories import Recorder
from workers.distill.callbacks import Reporter
from workers.distill.errors import DistillError
from workers.distill.steplog import StepLog, StopPoll


def _losses(total: float) -> dict[str, torch.Tensor]:
    t = torch.tensor(total, requires_grad=True) * 1.0  # as a step returns it: in a graph
    return {"hidden": t / 2, "total": t}


def test_steps_wait_for_the_flush_and_then_all_arrive_in_order() -> None:
    rec = Recorder()
    report = Reporter(rec)
    report.step = 10  # an earlier stage's steps
    log = StepLog(report, "intermediate_distill", every=2)
    for i in range(3):
        log.add(_losses(1.0 + i), learning_rate=0.1 * i)
    assert rec.progress == [] and log.global_step == 13
    assert log.flush() == {"hidden": 1.5, "total": 3.0}
    assert [(p.step, p.losses, p.learning_rate) for p in rec.progress] == [
        (11, {"hidden": 0.5, "total": 1.0}, 0.0),
        (12, {"hidden": 1.0, "total": 2.0}, 0.1),
        (13, {"hidden": 1.5, "total": 3.0}, 0.2),
    ]
    assert [e.data["step"] for e in rec.events if e.type == "loss"] == [12]
    assert log.flush() == {"hidden": 1.5, "total": 3.0} and len(rec.progress) == 3


def test_a_non_finite_loss_ends_the_run_after_the_steps_before_it() -> None:
    rec = Recorder()
    log = StepLog(Reporter(rec), "prediction_distill", every=50)
    for total in (1.0, math.nan, 2.0):
        log.add(_losses(total), learning_rate=0.0)
    with pytest.raises(DistillError) as info:
        log.flush()
    assert info.value.code == "training_diverged"
    assert [p.step for p in rec.progress] == [1]


def test_stop_poll_asks_at_most_once_per_interval() -> None:
    asked: list[int] = []

    class Counting(Recorder):
        def should_stop(self) -> bool:
            asked.append(1)
            return False

    every = StopPoll(Reporter(Counting()), 0.0)
    assert all(every.due() for _ in range(3))
    rarely = StopPoll(Reporter(Counting()), 3600.0)
    assert rarely.stopping() is False and len(asked) == 1  # the first chance asks
    assert [rarely.stopping() for _ in range(5)] == [False] * 5 and len(asked) == 1
    assert not rarely.due()
