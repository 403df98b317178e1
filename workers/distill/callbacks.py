"""What a run tells its caller (progress, events), what it asks (stop?), and JSON-safe data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from contract.config import DistillConfig
from contract.vocab import EventLevel, EventType, Stage


@dataclass(frozen=True)
class Progress:
    stage: Stage
    step: int  # global, across all stages; 1-based after the first step
    total_steps: int  # planned before training starts
    losses: dict[str, float]  # this step's components + "total"; {} for a stage marker
    learning_rate: float


@dataclass(frozen=True)
class Event:
    type: EventType  # the engine's: stage_started | stage_finished | loss | evaluation |
    # checkpoint_saved | resumed | warning
    message: str
    data: dict[str, Any]
    level: EventLevel = "info"


class Callbacks(Protocol):
    def on_config(self, config: DistillConfig) -> None:
        """Once, after the teacher is loaded: the configuration with every default resolved."""
        ...

    def on_progress(self, p: Progress) -> None:
        """Every optimizer step, in order, with its own losses; delivered in bursts (when the
        run next asks should_stop(), or writes a checkpoint), not as each step ends."""
        ...

    def on_event(self, e: Event) -> None: ...

    def should_stop(self) -> bool:
        """Asked at most once per run(stop_poll_s=...) (1 s), and at every checkpoint."""
        ...


class Reporter:
    """The run's side of the callbacks; it owns the global step count."""

    def __init__(self, callbacks: Callbacks) -> None:
        self.callbacks = callbacks
        self.step = 0
        self.total_steps = 0

    def event(
        self, type_: EventType, message: str, data: dict[str, Any], level: EventLevel = "info"
    ) -> None:
        self.callbacks.on_event(Event(type_, message, jsonable(data), level))

    def stepped(self, stage: Stage, losses: dict[str, float], learning_rate: float) -> None:
        """One optimizer step done."""
        self.step += 1
        self.callbacks.on_progress(
            Progress(stage, self.step, self.total_steps, losses, learning_rate)
        )

    def marker(self, stage: Stage) -> None:
        """A phase without optimizer steps (evaluate, export) begins."""
        self.callbacks.on_progress(Progress(stage, self.step, self.total_steps, {}, 0.0))

    def should_stop(self) -> bool:
        return self.callbacks.should_stop()


def jsonable(value: Any) -> Any:
    """NaN and infinities become null, numpy scalars plain numbers, tuples lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return jsonable(value.item())
    return value
