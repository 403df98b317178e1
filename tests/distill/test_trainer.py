from pathlib import Path

import pytest
from transformers import AutoModel

from contract.config import teacher_finetune_rate
from contract.records import Example
from tests.distill.conftest import Recorder, tiny_config
from workers.distill.errors import DistillError, Stopped
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


def test_same_seed_gives_the_same_losses(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    a, b = Recorder(), Recorder()
    _run(tiny_config(), teacher_dir, train_examples, dev_examples, tmp_path / "a", a)
    _run(tiny_config(), teacher_dir, train_examples, dev_examples, tmp_path / "b", b)
    assert a.curve() == b.curve()
    c = Recorder()
    _run(tiny_config(seed=7), teacher_dir, train_examples, dev_examples, tmp_path / "c", c)
    assert c.curve() != a.curve()


def test_progress_covers_every_step_with_a_planned_total(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    rec = Recorder()
    result = _run(tiny_config(), teacher_dir, train_examples, dev_examples, tmp_path, rec)
    trained = [p for p in rec.progress if p.losses]
    # 40 examples in batches of 16: 3 steps (the last of 8) per epoch, per stage
    assert [p.step for p in trained] == list(range(1, 7))
    assert {p.total_steps for p in rec.progress} == {6}
    assert [p.stage for p in trained] == ["intermediate_distill"] * 3 + ["prediction_distill"] * 3
    assert set(trained[0].losses) == {"embedding", "hidden", "attention", "total"}
    assert set(trained[-1].losses) == {"prediction", "hard_label", "total"}
    assert [p.stage for p in rec.progress if not p.losses] == ["evaluate", "export"]
    types = {e.type for e in rec.events}
    assert {"stage_started", "stage_finished", "loss", "evaluation", "checkpoint_saved"} <= types
    m = result.metrics
    assert set(m["student"]) == {"accuracy", "macro_f1", "mcc"} and "retention" in m
    assert m["parameters"]["student"] < m["parameters"]["teacher"]
    assert m["size_bytes"]["student"] > 0 and m["latency_ms"]["student"]["batch_32"]["median"] > 0


@pytest.mark.parametrize(
    ("teacher_fixture", "stop_at"),
    [
        ("teacher_dir", 2),  # mid intermediate stage
        ("teacher_dir", 3),  # exactly at the stage boundary
        ("base_teacher_dir", 2),  # mid teacher fine-tuning
        ("base_teacher_dir", 4),  # after the fine-tuned teacher was saved
    ],
)
def test_resumed_run_repeats_the_uninterrupted_loss_curve(
    request, teacher_fixture, stop_at, train_examples, dev_examples, tmp_path
) -> None:
    teacher = request.getfixturevalue(teacher_fixture)
    config = tiny_config(checkpoint_every_steps=10_000)
    whole = Recorder()
    _run(config, teacher, train_examples, dev_examples, tmp_path / "whole", whole)

    first = Recorder(stop_at=stop_at)
    with pytest.raises(Stopped):
        _run(config, teacher, train_examples, dev_examples, tmp_path / "cut", first)
    assert first.curve()[-1][1] == stop_at
    assert (tmp_path / "cut" / "checkpoints" / "last.pt").exists()
    second = Recorder()
    _run(config, teacher, train_examples, dev_examples, tmp_path / "cut", second)
    assert second.curve()[0][1] == stop_at + 1
    assert first.curve() + second.curve() == whole.curve()


def test_resume_refuses_another_config(teacher_dir, train_examples, dev_examples, tmp_path) -> None:
    with pytest.raises(Stopped):
        _run(
            tiny_config(), teacher_dir, train_examples, dev_examples, tmp_path, Recorder(stop_at=1)
        )
    with pytest.raises(DistillError) as info:
        _run(tiny_config(seed=1), teacher_dir, train_examples, dev_examples, tmp_path, Recorder())
    assert info.value.code == "checkpoint_mismatch"


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


def test_stages_have_their_own_settings(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    config = tiny_config(
        distillation={
            "intermediate": {
                "epochs": 2,
                "learning_rate": 1e-2,
                "schedule": "constant",
                "warmup_ratio": 0.0,
            },
            "prediction": {"epochs": 1, "schedule": "cosine"},
        }
    )
    rec = Recorder()
    _run(config, teacher_dir, train_examples, dev_examples, tmp_path, rec)
    inter = [p for p in rec.progress if p.stage == "intermediate_distill"]
    assert len(inter) == 6 and {p.learning_rate for p in inter} == {1e-2}
    pred = [p.learning_rate for p in rec.progress if p.stage == "prediction_distill"]
    assert pred[0] > pred[-1]


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


def test_regression_on_text_pairs(tmp_path, vocab) -> None:
    from tests.factories import save_tiny_bert

    teacher = save_tiny_bert(tmp_path / "t", vocab, head="regression", layers=2)
    pairs = [Example(f"a good movie {i}", f"a bad film {i % 3}", float(i % 5)) for i in range(20)]
    rec = Recorder()
    result = _run(
        tiny_config(task="regression"), teacher, pairs[:14], pairs[14:], tmp_path / "w", rec
    )
    assert set(result.metrics["student"]) == {"pearson", "spearman", "mse"}
    assert "regression" in [p for p in rec.progress if p.losses][-1].losses


def test_different_head_counts_use_relation_distillation(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    config = tiny_config(student={"num_attention_heads": 2})
    rec = Recorder()
    _run(config, teacher_dir, train_examples, dev_examples, tmp_path, rec)
    first = [p for p in rec.progress if p.losses][0].losses
    assert first["attention"] > 0
    with pytest.raises(DistillError) as info:
        _run(
            tiny_config(student={"num_attention_heads": 2}, distillation={"attention_loss": "mse"}),
            teacher_dir,
            train_examples,
            dev_examples,
            tmp_path / "mse",
            Recorder(),
        )
    assert info.value.code == "config_invalid"


def test_general_distillation_exports_a_base_model(
    base_teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    unlabelled = [Example(e.text) for e in train_examples]
    rec = Recorder()
    result = _run(
        tiny_config(task="general"),
        base_teacher_dir,
        unlabelled,
        [Example(e.text) for e in dev_examples],
        tmp_path,
        rec,
    )
    assert {p.stage for p in rec.progress if p.losses} == {"general_distill"}
    model = AutoModel.from_pretrained(result.export_dir)
    assert model.config.num_hidden_layers == 2


def test_trimmed_vocabulary_student(teacher_dir, train_examples, dev_examples, tmp_path) -> None:
    result = _run(
        tiny_config(student={"trim_vocab": True}, export={"onnx": True}),
        teacher_dir,
        train_examples,
        dev_examples,
        tmp_path,
        Recorder(),
    )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(result.export_dir)
    model = AutoModel.from_pretrained(result.export_dir)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    teacher_tok = AutoTokenizer.from_pretrained(teacher_dir)
    assert len(tok) < len(teacher_tok)
    text = train_examples[0].text
    assert tok.tokenize(text) == teacher_tok.tokenize(text)


def test_training_on_labels_alone_never_runs_the_teacher(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    """With every teacher term at 0 the prediction stage skips the teacher's forward pass."""
    import torch

    teacher_width = AutoModel.from_pretrained(teacher_dir).config.hidden_size
    assert teacher_width != 16  # tiny_config's student is 16 wide

    def teacher_forwards(weights: dict, workdir: Path) -> tuple[int, list]:
        calls: list[int] = []

        def spy(module, _args, _output) -> None:  # noqa: ANN001
            if module.__class__.__name__.endswith("ForSequenceClassification") and (
                module.config.hidden_size == teacher_width
            ):
                calls.append(1)

        config = tiny_config(distillation={"intermediate": {"enabled": False}, "weights": weights})
        rec = Recorder()
        handle = torch.nn.modules.module.register_module_forward_hook(spy)
        try:
            _run(config, teacher_dir, train_examples, dev_examples, workdir, rec)
        finally:
            handle.remove()
        return len(calls), [p for p in rec.progress if p.losses]

    alone, steps = teacher_forwards({"prediction": 0, "hard_label": 1}, tmp_path / "labels")
    with_kd, kd_steps = teacher_forwards({"prediction": 1, "hard_label": 1}, tmp_path / "kd")
    assert steps and all(set(p.losses) == {"hard_label", "total"} for p in steps)
    assert len(steps) == len(kd_steps)
    # Evaluation and export score the teacher in both runs; only KD adds one call a step.
    assert alone > 0 and with_kd - alone == len(steps)
