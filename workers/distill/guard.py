"""The collapse guard: a classifier student that ends its task stages predicting one class for
nearly every validation row, where the teacher does not, gets the next rung of its recipe.

A rung is the task stages again, from where the student is, the first of them (intermediate
when the job has it) 2**rung times as long: the collapses measured here were an intermediate
stage too short to get past one fixed output (README, "why random starts collapse"). Rungs are
planned only after a collapse is seen, so a resumed run plans again the rungs its checkpoint
is in (`restore`): they are a function of the rung number alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from contract.config import CollapseGuardConfig
from contract.vocab import EventLevel, EventType

from .callbacks import Reporter
from .data import Batches
from .evaluate import COLLAPSE_SHARE, predict, top_class
from .features import on_device
from .prepare import PlannedStage, Prepared, eval_batches
from .student import Student

TASK_STAGES = ("intermediate_distill", "prediction_distill")


@dataclass
class CollapseGuard:
    ready: Prepared
    device: torch.device
    report: Reporter
    base: list[PlannedStage]  # the task stages as the job planned them
    rungs: int = 0  # rungs planned so far
    spent: int = 0  # their steps
    history: list[dict[str, Any]] = field(default_factory=list)  # what the card says
    _teacher_top: dict[str, Any] | None = None

    @classmethod
    def of(
        cls, ready: Prepared, stages: list[PlannedStage], device: torch.device, report: Reporter
    ) -> CollapseGuard:
        base = [s for s in stages if s.name in TASK_STAGES]
        return cls(ready, device, report, base)

    @property
    def settings(self) -> CollapseGuardConfig:
        return self.ready.config.distillation.collapse_guard

    @property
    def budget(self) -> int:
        return int(self.settings.budget * sum(s.steps for s in self.base))

    @property
    def active(self) -> bool:
        config = self.ready.config
        return (
            self.settings.enabled
            and config.task == "classification"
            and bool(self.ready.validation)
            and bool(self.base)
        )

    def rung(self, k: int) -> list[PlannedStage]:
        """Rung `k` (from 1): the task stages, the first one 2**k times its planned epochs."""
        out = []
        for i, stage in enumerate(self.base):
            epochs = stage.settings.epochs
            assert epochs is not None  # resolved
            longer = epochs * 2**k if i == 0 else epochs
            settings = stage.settings.model_copy(update={"epochs": longer})
            out.append(replace(stage, settings=settings, note=f"collapse guard, rung {k}"))
        return out

    def restore(self, stages: list[PlannedStage], start: int) -> None:
        """Plan again the rungs a resumed checkpoint (at stage `start`) is in or past."""
        while start > len(stages) and self.active:
            self._extend(stages)

    def retry(self, stages: list[PlannedStage], student: Student) -> bool:
        """After the last planned stage: True when a rung was added to `stages` to train."""
        if not self.active:
            return False
        share, label = self._student_top(student)
        after = f"rung {self.rungs}" if self.rungs else "its task stages"
        if share <= COLLAPSE_SHARE:
            if self.rungs:
                self._note(
                    f"collapse guard: after rung {self.rungs} the student predicts no class for "
                    f"more than {COLLAPSE_SHARE:.0%} of the validation rows (top: {label!r}, "
                    f"{share:.0%})",
                    outcome="recovered",
                    share=share,
                    label=label,
                )
            return False
        teacher = self._teacher_share()
        if teacher > COLLAPSE_SHARE:  # the data is that lopsided, or the teacher is stuck too
            return False  # finish() warns about both
        reason = self._blocked()
        self._note(
            f"the student predicts {label!r} for {share:.0%} of the validation rows after "
            f"{after} (the teacher: {teacher:.0%} for its top class): it has collapsed; "
            + (reason or f"trying rung {self.rungs + 1} of the recipe"),
            outcome="stopped" if reason else "retry",
            share=share,
            label=label,
            type_="warning",
            level="warning",
        )
        if reason:
            return False
        self._extend(stages)
        return True

    def summary(self) -> dict[str, Any]:
        """metrics["collapse_guard"]: rungs run and what was seen after each."""
        return {"rungs": self.rungs, "steps": self.spent, "history": self.history}

    def _extend(self, stages: list[PlannedStage]) -> None:
        added = self.rung(self.rungs + 1)
        stages.extend(added)
        self.rungs += 1
        self.spent += sum(s.steps for s in added)
        self.report.total_steps = sum(s.steps for s in stages)

    def _blocked(self) -> str | None:
        """Why no further rung runs, or None."""
        if self.rungs >= self.settings.max_rungs:
            return f"no rung left (max_rungs {self.settings.max_rungs})"
        cost = sum(s.steps for s in self.rung(self.rungs + 1))
        if self.spent + cost > self.budget:
            return (
                f"rung {self.rungs + 1} would take {cost} steps and the guard's budget has "
                f"{self.budget - self.spent} left"
            )
        return None

    def _note(
        self,
        message: str,
        *,
        outcome: str,
        share: float,
        label: str,
        type_: EventType = "evaluation",
        level: EventLevel = "info",
    ) -> None:
        entry = {"after_rung": self.rungs, "outcome": outcome, "label": label, "share": share}
        self.history.append(entry)
        self.report.event(type_, message, {"phase": "collapse_guard", **entry}, level=level)

    def _student_top(self, student: Student) -> tuple[float, str]:
        model = on_device(student.model, self.device)
        logits, _ = predict(
            model, self._validation(), device=self.device, input_map=student.vocab.input_map
        )
        top = top_class("classification", logits)
        assert top is not None  # classification, and validation rows exist (active)
        return float(top["share"]), self.ready.teacher.labels[top["class"]]

    def _teacher_share(self) -> float:
        """Once: the teacher does not change after its fine-tuning."""
        if self._teacher_top is None:
            # on the run's device, wherever a resumed run that skipped its stages left it
            teacher = self.ready.teacher
            teacher.model = on_device(teacher.model, self.device)
            logits, _ = predict(teacher.model, self._validation(), device=self.device)
            self._teacher_top = top_class("classification", logits)
        return float(self._teacher_top["share"]) if self._teacher_top else 0.0

    def _validation(self) -> Batches:
        return eval_batches(self.ready, self.ready.validation, self.ready.pad_id)
