import math
from pathlib import Path

import pytest
import torch

from contract.config import recipe_epochs, teacher_finetune_rate
from contract.records import Example
from tests.factories import Recorder, tiny_config
from workers.distill.callbacks import Reporter
from workers.distill.errors import DistillError
from workers.distill.losses import NO_CLASS
from workers.distill.prepare import Prepared, plan_stages, prepare
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


def _prepare(config, teacher: Path, train, dev, workdir: Path) -> Prepared:  # noqa: ANN001
    return prepare(
        config,
        teacher_source=str(teacher),
        train=train,
        validation=dev,
        workdir=workdir,
        device=torch.device("cpu"),
        report=Reporter(Recorder()),
    )


def _augmenting(mlm: Path, **overrides: object):  # noqa: ANN202
    augmentation = {"enabled": True, "mlm_model": str(mlm), "n_a": 4, "k": 3, "p_t": 1.0}
    return tiny_config(distillation={"augmentation": augmentation}, **overrides)


def test_augmented_copies_carry_no_gold_label(
    teacher_dir, mlm_dir, train_examples, dev_examples, tmp_path
) -> None:
    ready = _prepare(_augmenting(mlm_dir), teacher_dir, train_examples, dev_examples, tmp_path)
    originals, copies = ready.task[: len(ready.train)], ready.task[len(ready.train) :]
    assert originals == ready.train
    assert copies and {e.label for e in copies} == {NO_CLASS}


def test_step_bounds_grow_with_augmentation(
    teacher_dir, mlm_dir, train_examples, dev_examples, tmp_path
) -> None:
    """The task stages' epochs come from the recipe for the rows they train on: the original
    rows and their copies. Batch 2 keeps the recipe's bounds, not its epoch caps, in play."""
    hp = {"epochs": None, "batch_size": 2}
    plain = _prepare(
        tiny_config(hyperparameters=hp), teacher_dir, train_examples, dev_examples, tmp_path / "p"
    )
    ready = _prepare(
        _augmenting(mlm_dir, hyperparameters=hp),
        teacher_dir,
        train_examples,
        dev_examples,
        tmp_path,
    )
    rows = len(ready.task)
    assert rows > 2 * len(ready.train)
    before = {s.name: s.steps for s in plan_stages(plain)}
    for stage in plan_stages(ready):
        if stage.name == "teacher_finetune":
            continue
        recipe = stage.name.removesuffix("_distill")
        epochs = recipe_epochs(recipe, num_examples=rows, batch_size=2)
        assert epochs != recipe_epochs(recipe, num_examples=len(ready.train), batch_size=2)
        assert stage.settings.epochs == epochs
        assert stage.steps == epochs * math.ceil(rows / 2)
        assert stage.steps > before[stage.name]


def test_general_distill_in_a_task_job_says_what_it_is(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    """Enabled in a task job, the stage is intermediate losses on the task's rows with the
    fine-tuned teacher: its events say so, and task "general" is left as it was."""
    config = tiny_config(distillation={"general": {"enabled": True}})
    ready = _prepare(config, teacher_dir, train_examples, dev_examples, tmp_path)
    (general,) = [s for s in plan_stages(ready) if s.name == "general_distill"]
    assert "not TinyBERT's general distillation" in general.note
    assert general.data.data == ready.train
