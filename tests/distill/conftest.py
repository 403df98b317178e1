"""Tiny real BERTs (random weights, a WordPiece vocabulary of the test data) shared per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contract.records import Example
from tests.factories import TINY_SENTIMENT, read_jsonl_examples, save_tiny_bert, tiny_vocab

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
