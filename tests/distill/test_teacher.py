from pathlib import Path

import pytest

from tests.factories import save_tiny_bert, save_tiny_tokenizer
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


def test_a_teacher_folder_without_tokenizer_files_is_refused(
    tmp_path: Path, vocab: list[str]
) -> None:
    """transformers would build a five-token tokenizer for it, without a word: all [UNK]."""
    path = save_tiny_bert(tmp_path / "t", vocab)
    for name in ("tokenizer.json", "vocab.txt"):
        (path / name).unlink(missing_ok=True)
    with pytest.raises(DistillError) as info:
        load_teacher(str(path), task="classification", train_labels=["neg", "pos"])
    assert info.value.code == "tokenizer_missing"


def test_a_tokenizer_that_does_not_cover_the_embeddings_is_refused(
    tmp_path: Path, vocab: list[str]
) -> None:
    """What a hub repo without its tokenizer gives (no files to check, a tokenizer built from
    nothing), and a folder holding another model's tokenizer, are both errors."""
    from transformers import AutoTokenizer

    from workers.distill.teacher import check_vocabulary, load_model

    path = save_tiny_bert(tmp_path / "t", vocab)
    (path / "tokenizer.json").unlink()
    save_tiny_tokenizer(path, vocab[:40])
    with pytest.raises(DistillError) as info:
        load_teacher(str(path), task="classification", train_labels=["neg", "pos"])
    assert info.value.code == "tokenizer_mismatch"

    bare = save_tiny_bert(tmp_path / "bare", vocab)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        (bare / name).unlink(missing_ok=True)
    built = AutoTokenizer.from_pretrained(bare)
    model = load_model(str(bare), task="classification", labels=["neg", "pos"], code="x")
    with pytest.raises(DistillError) as hub:
        check_vocabulary(built, model, what="teacher 'some/hub-repo'")
    assert hub.value.code == "tokenizer_mismatch" and "[UNK]" in hub.value.message
