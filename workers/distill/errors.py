"""The engine's two exceptions; kept apart so every module can raise them without cycles."""

from __future__ import annotations


class DistillError(Exception):
    """A user-facing failure with a stable code, e.g. teacher_not_found or mlm_head_missing."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Stopped(Exception):
    """should_stop() said yes; raised after the checkpoint is written."""
