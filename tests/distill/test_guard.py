"""The collapse guard: a student stuck on one class gets the next rung of its recipe."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from contract.records import Example
from tests.factories import Recorder, save_tiny_bert, tiny_config
from workers.distill.errors import Stopped
from workers.distill.trainer import run

# 40 training rows in batches of 16: 3 steps an epoch
STEPS_PER_EPOCH = 3


def _biased(folder: Path, bias: float, rows: list[Example] | None = None) -> Path:
    """The classifier at `folder` re-biased: +bias towards "neg", or (with `rows`) split so
    that about half of `rows` fall on each side."""
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        if rows is None:
            model.classifier.bias.copy_(torch.tensor([bias, -bias]))
        else:
            # a random head barely tells rows apart: widen it, then split at the middle margin
            model.classifier.weight.mul_(1000.0)
            enc = tokenizer([e.text for e in rows], padding=True, return_tensors="pt")
            logits = model.eval()(**enc).logits
            margins = (logits[:, 1] - logits[:, 0]).sort().values
            middle = len(margins) // 2
            model.classifier.bias[1] -= (margins[middle - 1] + margins[middle]) / 2
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def split_teacher(tmp_path_factory, vocab, dev_examples) -> Path:  # noqa: ANN001
    """A teacher that predicts both classes on the validation rows."""
    folder = save_tiny_bert(tmp_path_factory.mktemp("split-teacher"), vocab, layers=2)
    return _biased(folder, 0.0, rows=dev_examples)


@pytest.fixture(scope="module")
def stuck_student(tmp_path_factory, vocab) -> Path:  # noqa: ANN001
    """A student whose head says "neg" whatever the input, by a margin training at 1e-9 keeps."""
    folder = save_tiny_bert(
        tmp_path_factory.mktemp("stuck"), vocab, hidden=16, heads=4, intermediate=32
    )
    return _biased(folder, 50.0)


def _config(**guard):  # noqa: ANN003, ANN202
    return tiny_config(
        student={"init": "model", "init_model": "mdl_0123456789abcdef"},
        hyperparameters={"learning_rate": 1e-9},
        distillation={"collapse_guard": {"max_rungs": 2, "budget": 100.0, **guard}},
        checkpoint_every_steps=10_000,
    )


def _run(config, teacher: Path, student: Path, train, dev, workdir: Path, rec: Recorder):  # noqa: ANN001, ANN202
    return run(
        config,
        teacher=str(teacher),
        train=train,
        validation=dev,
        workdir=workdir,
        callbacks=rec,
        init_model=str(student),
        stop_poll_s=0.0,
    )


def _guard_events(rec: Recorder) -> list[tuple[str, int, str]]:
    return [
        (e.data["outcome"], e.data["after_rung"], e.level)
        for e in rec.events
        if e.data.get("phase") == "collapse_guard"
    ]


def _intermediate_epochs(rec: Recorder) -> list[int]:
    return [
        e.data["epochs"]
        for e in rec.events
        if e.type == "stage_started" and e.data.get("stage") == "intermediate_distill"
    ]


def test_a_collapsed_student_climbs_the_rungs_until_none_is_left(
    split_teacher, stuck_student, train_examples, dev_examples, tmp_path
) -> None:
    rec = Recorder()
    result = _run(
        _config(), split_teacher, stuck_student, train_examples, dev_examples, tmp_path, rec
    )
    assert _guard_events(rec) == [
        ("retry", 0, "warning"),
        ("retry", 1, "warning"),
        ("stopped", 2, "warning"),
    ]
    assert (
        "no rung left" in [e for e in rec.events if e.data.get("outcome") == "stopped"][0].message
    )
    # rung k: the intermediate stage 2**k times its epoch, then the prediction stage again
    assert _intermediate_epochs(rec) == [1, 2, 4]
    base, rungs = 2 * STEPS_PER_EPOCH, (2 + 1) * STEPS_PER_EPOCH + (4 + 1) * STEPS_PER_EPOCH
    trained = [p for p in rec.progress if p.losses]
    assert [p.step for p in trained] == list(range(1, base + rungs + 1))
    assert trained[-1].total_steps == base + rungs
    guard = result.metrics["collapse_guard"]
    assert guard["rungs"] == 2 and guard["steps"] == rungs
    assert [h["outcome"] for h in guard["history"]] == ["retry", "retry", "stopped"]
    card = (result.export_dir / "README.md").read_text()
    assert "### Collapse guard" in card and "no rung or budget was left" in card


def test_the_budget_stops_a_rung_that_would_exceed_it(
    split_teacher, stuck_student, train_examples, dev_examples, tmp_path
) -> None:
    rec = Recorder()
    # rung 1 takes 9 steps; a budget of 1x the 6 planned steps leaves room for none
    result = _run(
        _config(budget=1.0),
        split_teacher,
        stuck_student,
        train_examples,
        dev_examples,
        tmp_path,
        rec,
    )
    assert _guard_events(rec) == [("stopped", 0, "warning")]
    stopped = [e for e in rec.events if e.data.get("phase") == "collapse_guard"][0]
    assert "would take 9 steps" in stopped.message and "6 left" in stopped.message
    assert _intermediate_epochs(rec) == [1]
    assert result.metrics["collapse_guard"]["rungs"] == 0


def test_a_teacher_stuck_on_one_class_gets_no_rung(
    teacher_dir, stuck_student, vocab, train_examples, dev_examples, tmp_path
) -> None:
    """The data may be that lopsided: training the student longer would not help."""
    stuck_teacher = _biased(save_tiny_bert(tmp_path / "t", vocab, layers=2), 50.0)
    rec = Recorder()
    result = _run(
        _config(), stuck_teacher, stuck_student, train_examples, dev_examples, tmp_path / "w", rec
    )
    assert _guard_events(rec) == [] and _intermediate_epochs(rec) == [1]
    assert result.metrics["collapse_guard"] == {"rungs": 0, "steps": 0, "history": []}
    warned = {e.data.get("model") for e in rec.events if e.type == "warning"}
    assert warned == {"teacher", "student"}  # finish() says so for both


def test_a_disabled_guard_leaves_a_collapsed_student_as_it_is(
    split_teacher, stuck_student, train_examples, dev_examples, tmp_path
) -> None:
    rec = Recorder()
    result = _run(
        _config(enabled=False),
        split_teacher,
        stuck_student,
        train_examples,
        dev_examples,
        tmp_path,
        rec,
    )
    assert _guard_events(rec) == [] and "collapse_guard" not in result.metrics
    assert [e.data.get("model") for e in rec.events if e.type == "warning"] == ["student"]


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [6, 8])  # the end of the planned stages; inside rung 1
def test_a_run_stopped_at_or_inside_a_rung_resumes_into_it(
    stop_at, split_teacher, stuck_student, train_examples, dev_examples, tmp_path
) -> None:
    whole = Recorder()
    _run(
        _config(), split_teacher, stuck_student, train_examples, dev_examples, tmp_path / "a", whole
    )
    first = Recorder(stop_at=stop_at)
    with pytest.raises(Stopped):
        _run(
            _config(),
            split_teacher,
            stuck_student,
            train_examples,
            dev_examples,
            tmp_path / "b",
            first,
        )
    second = Recorder()
    result = _run(
        _config(),
        split_teacher,
        stuck_student,
        train_examples,
        dev_examples,
        tmp_path / "b",
        second,
    )
    assert first.curve() + second.curve() == whole.curve()
    assert [p.total_steps for p in second.progress][-1] == 30
    assert result.metrics["collapse_guard"]["rungs"] == 2
