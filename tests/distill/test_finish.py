import json
from pathlib import Path

import pytest
import torch

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


def test_the_reported_accuracy_is_the_exported_files(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    """The student's numbers are those of the folder, model.onnx and model.int8.onnx a user
    gets, fed the validation texts through the exported (trimmed) tokenizer."""
    import numpy as np
    import onnxruntime as ort
    from sklearn.metrics import f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = tiny_config(student={"trim_vocab": True}, export={"onnx": True, "int8": True})
    result = _run(config, teacher_dir, train_examples, dev_examples, tmp_path, Recorder())
    tokenizer = AutoTokenizer.from_pretrained(result.export_dir)
    model = AutoModelForSequenceClassification.from_pretrained(result.export_dir).eval()
    # trimmed from the training rows alone: some validation words are unknown to the export
    texts = [e.text for e in dev_examples]
    assert any(tokenizer.unk_token in tokenizer.tokenize(t) for t in texts)
    gold = np.array([model.config.label2id[e.label] for e in dev_examples])
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        predicted = {"hf": model(**enc).logits.argmax(-1).numpy()}
    feed = {k: v.numpy() for k, v in enc.items()}
    for kind, path in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        session = ort.InferenceSession(str(result.export_dir / "onnx" / path))
        predicted[kind] = session.run(None, feed)[0].argmax(-1)

    m = result.metrics
    reported = {
        "hf": m["student"],
        "fp32": m["onnx"]["fp32"]["validation"],
        "int8": m["onnx"]["int8"]["validation"],
    }
    for kind, pred in predicted.items():
        assert reported[kind]["accuracy"] == pytest.approx(float(np.mean(pred == gold))), kind
        f1 = f1_score(gold, pred, average="macro", zero_division=0)
        assert reported[kind]["macro_f1"] == pytest.approx(f1), kind
    teacher = m["teacher"]
    assert m["retention"] == pytest.approx(m["student"]["accuracy"] / teacher["accuracy"])
    if teacher["macro_f1"]:
        assert m["retention_macro_f1"] == pytest.approx(
            m["student"]["macro_f1"] / teacher["macro_f1"]
        )
    assert "measured on the files of this export" in (result.export_dir / "README.md").read_text()


def test_a_teacher_that_predicts_one_class_gets_the_collapse_warning(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    """A teacher stuck on one class (as one reading nothing but [UNK] is) is reported, as a
    student is: a warning event naming the model, the class and its share."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    stuck = tmp_path / "stuck-teacher"
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([50.0, -50.0]))  # always "neg"
    model.save_pretrained(stuck)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(stuck)
    rec = Recorder()
    _run(tiny_config(), stuck, train_examples, dev_examples, tmp_path / "run", rec)
    warned = {e.data["model"]: e for e in rec.events if e.type == "warning" and "model" in e.data}
    teacher = warned["teacher"]
    assert teacher.level == "warning"
    assert teacher.data == {"stage": "evaluate", "model": "teacher", "label": "neg", "share": 1.0}
    assert f"for 100% of the {len(dev_examples)} validation rows" in teacher.message
