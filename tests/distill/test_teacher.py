from pathlib import Path

import pytest

from tests.factories import save_tiny_bert
from workers.distill.errors import DistillError
from workers.distill.teacher import load_teacher


def test_teacher_with_matching_head_keeps_its_label_order(tmp_path: Path, vocab: list[str]) -> None:
    path = save_tiny_bert(tmp_path / "t", vocab, labels=("pos", "neg"))
    teacher = load_teacher(str(path), task="classification", train_labels=["neg", "pos", "neg"])
    assert teacher.has_head and teacher.labels == ["pos", "neg"]
    other = load_teacher(str(path), task="classification", train_labels=["a", "b", "c"])
    assert not other.has_head and other.labels == ["a", "b", "c"]
    assert other.model.config.num_labels == 3


def test_teacher_load_failures_carry_codes(tmp_path: Path, vocab: list[str]) -> None:
    with pytest.raises(DistillError) as missing:
        load_teacher(str(tmp_path / "nope"), task="classification", train_labels=["a"])
    assert missing.value.code == "teacher_not_found"
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt")
    with pytest.raises(DistillError) as unsupported:
        load_teacher(str(tmp_path / "gpt"), task="classification", train_labels=["a"])
    assert unsupported.value.code == "teacher_unsupported"
