from pathlib import Path

import pytest

from contract.config import teacher_finetune_rate
from contract.records import Example
from tests.factories import Recorder, tiny_config
from workers.distill.errors import DistillError
from workers.distill.trainer import run


def _run(config, teacher: Path, train, dev, workdir: Path, recorder: Recorder):  # noqa: ANN001, ANN202
    return run(
        config,
        teacher=str(teacher),
        train=train,
        validation=dev,
        workdir=workdir,
        callbacks=recorder,
    )


def test_validation_is_held_out_when_missing(teacher_dir, train_examples, tmp_path) -> None:
    result = _run(
        tiny_config(validation_fraction=0.25),
        teacher_dir,
        train_examples,
        None,
        tmp_path,
        Recorder(),
    )
    assert result.metrics["validation_examples"] == 10


def test_teacher_without_head_is_fine_tuned_first(
    base_teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    rec = Recorder()
    result = _run(tiny_config(), base_teacher_dir, train_examples, dev_examples, tmp_path, rec)
    stages = [p.stage for p in rec.progress if p.losses]
    assert stages[:3] == ["teacher_finetune"] * 3
    # no rate was set: the recipe's for this teacher's width (32: a narrow teacher's 1e-4),
    # scaled to the batch size, peaks after the warm-up
    rate = teacher_finetune_rate(32) * (tiny_config().hyperparameters.batch_size / 32) ** 0.5
    started = next(e for e in rec.events if e.type == "stage_started")
    assert started.data["learning_rate"] == pytest.approx(rate)
    assert (tmp_path / "checkpoints" / "teacher-finetuned" / "model.safetensors").exists()
    assert "accuracy" in result.metrics["teacher"]


def test_unknown_validation_label_is_a_dataset_error(teacher_dir, train_examples, tmp_path) -> None:
    with pytest.raises(DistillError) as info:
        _run(
            tiny_config(),
            teacher_dir,
            train_examples,
            [Example("x", label="meh")],
            tmp_path,
            Recorder(),
        )
    assert info.value.code == "dataset_invalid"
