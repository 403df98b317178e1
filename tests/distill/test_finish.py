import json
from pathlib import Path

import pytest

from tests.factories import Recorder, tiny_config
from workers.distill.checkpoint import checkpoint_dir
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


def test_the_result_says_where_everything_is(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    rec = Recorder()
    result = _run(tiny_config(), teacher_dir, train_examples, dev_examples, tmp_path, rec)
    assert result.metrics_file == tmp_path / "metrics.json"
    assert json.loads(result.metrics_file.read_text()) == result.metrics
    assert result.export_dir == tmp_path / "export" and result.onnx_files == []
    assert result.config == rec.configs[0]
    assert result.config.hyperparameters.epochs == 1  # resolved: every stage's value set
    assert result.config.distillation.intermediate.schedule == "linear"
    assert checkpoint_dir(tmp_path) == tmp_path / "checkpoints"
    assert (checkpoint_dir(tmp_path) / "last.pt").is_file()


@pytest.mark.slow
def test_a_finished_run_reexports_without_training_again(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    config = tiny_config()
    run(
        config,
        teacher=str(teacher_dir),
        train=train_examples,
        validation=dev_examples,
        workdir=tmp_path,
        callbacks=Recorder(),
    )
    again = Recorder()
    result = run(
        config,
        teacher=str(teacher_dir),
        train=train_examples,
        validation=dev_examples,
        workdir=tmp_path,
        callbacks=again,
    )
    assert again.curve() == []
    assert Path(result.export_dir, "config.json").exists()
