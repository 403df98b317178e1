"""When the loop talks to its caller: step reports synced in bursts, stop polls throttled.

A step's losses stay tensors on the device; reading one as a number waits for the device to
finish (a host sync, which stalls a GPU's queue). So `StepLog` keeps them until a flush, which
reads them all in one sync and then reports every step in order, each with its own losses.
`StopPoll` asks should_stop() (a database read in the service) at most once per interval.
The loop flushes whenever it polls and before every checkpoint, so a caller that is asked
whether to stop has seen every step so far, and every step a checkpoint holds.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from contract.vocab import Stage

from .callbacks import Reporter
from .errors import DistillError


class StepLog:
    """This stage's steps not yet reported: (losses on the device, learning rate)."""

    def __init__(self, report: Reporter, stage: Stage, *, every: int) -> None:
        self.report = report
        self.stage = stage
        self.every = every  # a "loss" event every `every` global steps
        self.pending: list[tuple[dict[str, Tensor], float]] = []
        self.last: dict[str, float] = {}

    def add(self, losses: dict[str, Tensor], learning_rate: float) -> None:
        self.pending.append(({k: v.detach() for k, v in losses.items()}, learning_rate))

    @property
    def global_step(self) -> int:
        """Optimizer steps done in the run, reported or not."""
        return self.report.step + len(self.pending)

    def flush(self) -> dict[str, float]:
        """Report every pending step (one host sync); a non-finite loss ends the run there."""
        if not self.pending:
            return self.last
        names = list(self.pending[0][0])
        values = torch.stack(
            [torch.stack([losses[n].float() for n in names]) for losses, _ in self.pending]
        ).tolist()
        steps, self.pending = self.pending, []
        for (_, learning_rate), row in zip(steps, values, strict=True):
            losses = dict(zip(names, row, strict=True))
            if not math.isfinite(losses["total"]):
                raise DistillError("training_diverged", f"{self.stage}: loss is {losses['total']}")
            self.report.stepped(self.stage, losses, learning_rate)
            if self.report.step % self.every == 0:
                self.report.event(
                    "loss",
                    f"step {self.report.step}: loss {losses['total']:.4f}",
                    {"stage": self.stage, "step": self.report.step, "losses": losses},
                )
            self.last = losses
        return self.last


class StopPoll:
    """should_stop(), asked at most once every `interval` seconds (0: at every chance)."""

    def __init__(self, report: Reporter, interval: float) -> None:
        self.report = report
        self.interval = interval
        self.last = -math.inf

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval

    def ask(self) -> bool:
        self.last = time.monotonic()
        return self.report.should_stop()

    def stopping(self) -> bool:
        """Ask if due: for work between steps (building the teacher cache)."""
        return self.due() and self.ask()
