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


def test_the_metrics_and_the_card_carry_both_models_speed(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    config = tiny_config(export={"onnx": False, "latency_runs": 2, "throughput_runs": 1})
    result = _run(config, teacher_dir, train_examples, dev_examples, tmp_path, Recorder())
    speed = result.metrics["speed"]
    assert speed["seq_len"] == 128 and speed["runs"] == {"batch_1": 2, "batch_32": 1}
    # without ONNX export only the PyTorch runtimes exist, for both models
    assert set(speed["student"]) == set(speed["teacher"]) == {"pytorch_fp32", "pytorch_bf16"}
    assert speed["student"]["pytorch_bf16"]["batch_32_samples_per_s"] > 0
    assert speed["speedup"]["same_runtime"]["pytorch_bf16"]["batch_1"] > 0
    # the older shape stays, read from the same timing
    for side in ("teacher", "student"):
        fp32 = speed[side]["pytorch_fp32"]
        assert result.metrics["latency_ms"][side] == {
            "batch_1": fp32["batch_1_ms"],
            "batch_32": fp32["batch_32_ms"],
        }
    card = (result.export_dir / "README.md").read_text()
    assert "### Speed" in card and "| student | PyTorch bf16 |" in card
    assert "| teacher | PyTorch fp32 |" in card


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
