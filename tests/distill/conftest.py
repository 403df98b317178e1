"""Tiny real BERTs (random weights, a WordPiece vocabulary of the test data) shared per session."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from contract.config import DistillConfig
from contract.records import Example
from tests.factories import (
    TINY_SENTIMENT,
    read_jsonl_examples,
    save_tiny_bert,
    tiny_vocab,
)
from workers.distill.trainer import Event, Progress

# The test machine is small and shared; one intra-op thread avoids oversubscription stalls
# that make tiny models ten times slower, and changes no result.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def train_examples() -> list[Example]:
    return read_jsonl_examples(TINY_SENTIMENT / "train.jsonl")[:40]


@pytest.fixture(scope="session")
def dev_examples() -> list[Example]:
    return read_jsonl_examples(TINY_SENTIMENT / "dev.jsonl")[:16]


@pytest.fixture(scope="session")
def vocab() -> list[str]:
    texts = [
        e.text
        for split in ("train", "dev", "test")
        for e in read_jsonl_examples(TINY_SENTIMENT / f"{split}.jsonl")
    ]
    return tiny_vocab(texts)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, vocab: list[str]) -> Path:
    """4 layers, 32 wide, 4 heads, with a neg/pos head."""
    return save_tiny_bert(tmp_path_factory.mktemp("teacher"), vocab, layers=4)


@pytest.fixture(scope="session")
def base_teacher_dir(tmp_path_factory: pytest.TempPathFactory, vocab: list[str]) -> Path:
    """The same shape without a head: the run fine-tunes it first."""
    return save_tiny_bert(tmp_path_factory.mktemp("base-teacher"), vocab, head=None, layers=4)


@pytest.fixture(scope="session")
def mlm_dir(tmp_path_factory: pytest.TempPathFactory, vocab: list[str]) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("mlm"), vocab, head="mlm", layers=1)


@dataclass
class Recorder:
    """Callbacks that keep everything and can ask to stop after a given global step."""

    stop_at: int | None = None
    progress: list[Progress] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    configs: list[DistillConfig] = field(default_factory=list)

    def on_config(self, config: DistillConfig) -> None:
        self.configs.append(config)

    def on_progress(self, p: Progress) -> None:
        self.progress.append(p)

    def on_event(self, e: Event) -> None:
        self.events.append(e)

    def should_stop(self) -> bool:
        trained = [p for p in self.progress if p.losses]
        return self.stop_at is not None and bool(trained) and trained[-1].step >= self.stop_at

    def curve(self) -> list[tuple[str, int, float]]:
        return [(p.stage, p.step, p.losses["total"]) for p in self.progress if p.losses]


def tiny_config(**overrides: Any) -> DistillConfig:
    """A 2-layer, 16-wide student; one epoch per stage; no ONNX unless asked."""
    raw: dict[str, Any] = {
        "student": {
            "preset": None,
            "num_layers": 2,
            "hidden_size": 16,
            "num_attention_heads": 4,
            "intermediate_size": 32,
        },
        "hyperparameters": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3},
        "export": {"onnx": False, "latency_runs": 1},
        "log_every_steps": 2,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return DistillConfig.model_validate(raw)
