import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from contract.config import AugmentationConfig
from contract.records import Example
from tests.factories import Recorder, tiny_config
from workers.distill.augment import augment
from workers.distill.errors import DistillError
from workers.distill.trainer import run

EXAMPLES = [
    Example("a clever and brutal movie", label="pos"),
    Example("the film is bad", "but the cast is good", label="neg"),
]


def _augment(mlm: Path, cache: Path, **settings: object) -> list[Example]:
    config = AugmentationConfig(enabled=True, mlm_model=str(mlm), n_a=4, k=3, **settings)
    return augment(
        EXAMPLES,
        config,
        tokenizer=AutoTokenizer.from_pretrained(mlm),
        cache_dir=cache,
        seed=0,
        device=torch.device("cpu"),
        max_length=32,
    )


def test_augmentation_replaces_single_piece_words_with_mlm_candidates(mlm_dir, tmp_path) -> None:
    out = _augment(mlm_dir, tmp_path, p_t=1.0)
    assert out and len(out) <= 2 * 4
    for e in out:
        original = next(o for o in EXAMPLES if o.label == e.label)
        assert len(e.text.split()) == len(original.text.split())  # word for word
        assert (e.text_pair is None) == (original.text_pair is None)
    assert any(e.text != "a clever and brutal movie" for e in out if e.label == "pos")
    assert _augment(mlm_dir, tmp_path / "again", p_t=1.0) == out  # seeded


def test_p_t_zero_changes_nothing(mlm_dir, tmp_path) -> None:
    assert _augment(mlm_dir, tmp_path, p_t=0.0) == []  # copies equal to the original are dropped


def test_augmentation_is_cached_per_dataset_hash(mlm_dir, tmp_path) -> None:
    first = _augment(mlm_dir, tmp_path, p_t=1.0)
    (cached,) = tmp_path.glob("*.jsonl")
    marker = {"text": "from the cache", "text_pair": None, "label": "pos"}
    cached.write_text(json.dumps(marker) + "\n")
    assert _augment(mlm_dir, tmp_path, p_t=1.0) == [Example("from the cache", None, "pos")]
    _augment(mlm_dir, tmp_path, p_t=0.9)  # other settings, another entry
    assert len(list(tmp_path.glob("*.jsonl"))) == 2
    assert first


def test_a_model_without_mlm_head_is_refused(base_teacher_dir, tmp_path) -> None:
    with pytest.raises(DistillError) as info:
        _augment(base_teacher_dir, tmp_path)
    assert info.value.code == "mlm_head_missing"


def test_run_with_augmentation_trains_on_more_examples(
    teacher_dir, mlm_dir, train_examples, dev_examples, tmp_path
) -> None:
    config = tiny_config(
        distillation={
            "augmentation": {"enabled": True, "mlm_model": str(mlm_dir), "n_a": 2, "k": 3}
        }
    )
    rec = Recorder()
    run(
        config,
        teacher=str(teacher_dir),
        train=train_examples[:16],
        validation=dev_examples,
        workdir=tmp_path,
        callbacks=rec,
    )
    steps = [p for p in rec.progress if p.stage == "intermediate_distill"]
    assert len(steps) > 1  # 16 originals alone would be one batch of 16
    assert any(e.data.get("phase") == "augment" for e in rec.events)
