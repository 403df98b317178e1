from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from contract.config import DistillConfig
from contract.records import Example
from tests.factories import Recorder, tiny_config
from workers.distill.checkpoint import checkpoint_dir
from workers.distill.errors import DistillError, Stopped
from workers.distill.trainer import run


def _run(config, teacher: Path, train, dev, workdir: Path, recorder: Recorder, **kw):  # noqa: ANN001, ANN202
    """stop_poll_s=0: should_stop() after every step, so Recorder(stop_at=n) stops at step n."""
    return run(
        config,
        teacher=str(teacher),
        train=train,
        validation=dev,
        workdir=workdir,
        callbacks=recorder,
        **{"stop_poll_s": 0.0, **kw},
    )


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_other_export_settings_still_resume(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    """Export acts after training: asking for other ONNX or timing settings keeps the run."""
    config = tiny_config()
    with pytest.raises(Stopped):
        _run(config, teacher_dir, train_examples, dev_examples, tmp_path, Recorder(stop_at=2))
    export = config.export.model_copy(update={"int8": not config.export.int8, "latency_runs": 2})
    resumed = Recorder()
    _run(
        config.model_copy(update={"export": export}),
        teacher_dir,
        train_examples,
        dev_examples,
        tmp_path,
        resumed,
    )
    assert resumed.curve()[0][1] == 3


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_training_on_labels_alone_never_runs_the_teacher(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    """With every teacher term at 0 the prediction stage skips the teacher's forward pass; with
    KD the teacher runs once a step, or, with its logits cached, once over the data in all."""
    import torch

    teacher_width = AutoModel.from_pretrained(teacher_dir).config.hidden_size
    assert teacher_width != 16  # tiny_config's student is 16 wide

    def teacher_forwards(weights: dict, workdir: Path, cache: str) -> tuple[int, list]:
        calls: list[int] = []

        def spy(module, _args, _output) -> None:  # noqa: ANN001
            if module.__class__.__name__.endswith("ForSequenceClassification") and (
                module.config.hidden_size == teacher_width
            ):
                calls.append(1)

        distillation = {
            "intermediate": {"enabled": False},
            "prediction": {"epochs": 2},
            "weights": weights,
            "teacher_cache": {"mode": cache},
        }
        rec = Recorder()
        handle = torch.nn.modules.module.register_module_forward_hook(spy)
        try:
            _run(
                tiny_config(distillation=distillation),
                teacher_dir,
                train_examples,
                dev_examples,
                workdir,
                rec,
            )
        finally:
            handle.remove()
        return len(calls), [p for p in rec.progress if p.losses]

    labels = {"prediction": 0, "hard_label": 1}
    kd = {"prediction": 1, "hard_label": 1}
    alone, steps = teacher_forwards(labels, tmp_path / "labels", "auto")
    live, kd_steps = teacher_forwards(kd, tmp_path / "kd", "off")
    cached, cached_steps = teacher_forwards(kd, tmp_path / "cached", "auto")
    assert steps and all(set(p.losses) == {"hard_label", "total"} for p in steps)
    assert len(steps) == len(kd_steps) == len(cached_steps) == 6  # 2 epochs of 3 batches
    # Evaluation and export score the teacher in every run; KD adds one call a step, or one
    # pass over the 40 examples (a single batch of 64) to cache the logits.
    assert alone > 0 and live - alone == len(steps) and cached - alone == 1


def test_the_loss_falls_over_a_short_run(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    config = tiny_config(
        student={"init": "random"},
        distillation={
            "intermediate": {"epochs": 5, "learning_rate": 5e-3},
            "prediction": {"enabled": False},
        },
    )
    rec = Recorder()
    _run(config, teacher_dir, train_examples, dev_examples, tmp_path, rec)
    totals = [loss for _, _, loss in rec.curve()]
    assert len(totals) == 15
    assert sum(totals[-3:]) < 0.7 * sum(totals[:3])


def test_the_teacher_is_in_eval_mode_whenever_the_student_learns(
    base_teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    """Fine-tuning leaves the teacher in train mode; distillation must not read it that way."""
    import torch

    rec = Recorder()
    seen: list[tuple[str, bool]] = []

    def spy(module, _args, _output) -> None:  # noqa: ANN001
        if module.__class__.__name__.endswith("ForSequenceClassification") and (
            module.config.hidden_size == 32  # the teacher's width; the student is 16 wide
        ):
            started = [e.data["stage"] for e in rec.events if e.type == "stage_started"]
            seen.append((started[-1], module.training))

    handle = torch.nn.modules.module.register_module_forward_hook(spy)
    try:
        _run(tiny_config(), base_teacher_dir, train_examples, dev_examples, tmp_path, rec)
    finally:
        handle.remove()
    modes = {stage: {training for s, training in seen if s == stage} for stage, _ in seen}
    assert modes["teacher_finetune"] == {True}
    assert modes["intermediate_distill"] == modes["prediction_distill"] == {False}


@pytest.mark.slow
def test_resolving_twice_changes_nothing_and_the_resolved_config_resumes(
    base_teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    """The runner keeps the config the engine reports and hands it back on resume."""
    whole = Recorder()
    config = tiny_config(checkpoint_every_steps=10_000)
    _run(config, base_teacher_dir, train_examples, dev_examples, tmp_path / "whole", whole)
    (resolved,) = whole.configs
    assert resolved.distillation.teacher_finetune.learning_rate is not None
    again = resolved.resolved(num_train_examples=len(train_examples), teacher_width=32)
    assert again == resolved
    assert resolved.resolved(num_train_examples=1, teacher_width=768) == resolved

    first = Recorder(stop_at=4)
    with pytest.raises(Stopped):
        _run(config, base_teacher_dir, train_examples, dev_examples, tmp_path / "cut", first)
    stored = DistillConfig.model_validate(first.configs[0].model_dump(mode="json"))  # the row
    second = Recorder()
    _run(stored, base_teacher_dir, train_examples, dev_examples, tmp_path / "cut", second)
    assert second.configs == [resolved]
    assert first.curve() + second.curve() == whole.curve()


@pytest.mark.slow
def test_init_model_and_init_checkpoint_keep_the_configs_meaning(
    teacher_dir, vocab, train_examples, dev_examples, tmp_path
) -> None:
    """The config says what the user wrote; where the weights lie comes beside it."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from tests.factories import save_tiny_bert

    # no training stages: the exported student is the student as it was initialised
    untrained = {"intermediate": {"enabled": False}, "prediction": {"enabled": False}}

    def export_of(config, workdir: Path, **init) -> tuple[dict, Recorder]:  # noqa: ANN001
        rec = Recorder()
        result = run(
            config,
            teacher=str(teacher_dir),
            train=train_examples,
            validation=dev_examples,
            workdir=workdir,
            callbacks=rec,
            stop_poll_s=0.0,
            **init,
        )
        model = AutoModelForSequenceClassification.from_pretrained(result.export_dir)
        return model.state_dict(), rec

    _run(tiny_config(), teacher_dir, train_examples, dev_examples, tmp_path / "a", Recorder())
    saved = checkpoint_dir(tmp_path / "a") / "last.pt"
    trained = torch.load(saved, weights_only=True)["student"]
    config = tiny_config(student={"init": "random"}, distillation=untrained)
    state, rec = export_of(config, tmp_path / "b", init_checkpoint=saved)
    assert rec.configs[0].student.init == "random" and rec.configs[0].student.init_model is None
    assert all(torch.equal(state[k], trained[k]) for k in trained)

    init = save_tiny_bert(tmp_path / "init", vocab, head=None, hidden=16, heads=4, intermediate=32)
    named = tiny_config(
        student={"init": "model", "init_model": "mdl_0123456789abcdef"}, distillation=untrained
    )
    state, rec = export_of(named, tmp_path / "c", init_model=str(init))
    assert rec.configs[0].student.init_model == "mdl_0123456789abcdef"
    base = load_file(init / "model.safetensors")
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(state[f"bert.{key}"], base[key])


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


def test_a_teacher_handed_over_from_another_folder_still_resumes(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    """The checkpoint knows its teacher by content, so a caller may materialise it anew."""
    import shutil

    moved = shutil.copytree(teacher_dir, tmp_path / "scratch" / "teacher")
    with pytest.raises(Stopped):
        _run(
            tiny_config(), teacher_dir, train_examples, dev_examples, tmp_path, Recorder(stop_at=2)
        )
    rec = Recorder()
    _run(tiny_config(), moved, train_examples, dev_examples, tmp_path, rec)
    assert rec.curve()[0][1] == 3


def _hooks(model: torch.nn.Module) -> int:
    """Hooks on any module but transformers' own output collectors (installed at the first
    forward pass and inert unless a caller asks that model for hidden states)."""
    hooks = [
        h
        for m in model.modules()
        for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks)
        for h in d.values()
    ]
    return sum("output_capturing_hook" not in getattr(h, "__qualname__", "") for h in hooks)


def test_no_hook_remains_after_the_stages(
    teacher_dir, train_examples, dev_examples, tmp_path, monkeypatch
) -> None:
    """The attention capture's hooks would fire (and hold tensors) through evaluation, latency
    timing and ONNX export: none is left on either model once training is over."""
    import workers.distill.trainer as trainer

    counts: dict[str, tuple[int, int]] = {}
    real_finish = trainer.finish

    def finish(ready, student, **kw):  # noqa: ANN001, ANN003, ANN202
        counts["evaluation"] = (_hooks(ready.teacher.model), _hooks(student.model))
        result = real_finish(ready, student, **kw)
        counts["after"] = (_hooks(ready.teacher.model), _hooks(student.model))
        return result

    monkeypatch.setattr(trainer, "finish", finish)
    config = tiny_config(distillation={"attention_loss": "mse"}, export={"onnx": True})
    rec = Recorder()
    _run(config, teacher_dir, train_examples, dev_examples, tmp_path, rec)
    assert "intermediate_distill" in {p.stage for p in rec.progress if p.losses}
    assert counts == {"evaluation": (0, 0), "after": (0, 0)}


def test_a_resume_that_skips_every_stage_evaluates_on_the_run_device(
    teacher_dir, train_examples, dev_examples, tmp_path, monkeypatch
) -> None:
    """Every stage done in an earlier process: the teacher is loaded afresh (on the CPU) and
    must be moved to the run's device like the student, or a GPU worker's retry crashes.
    Without a GPU the crash cannot happen here, so the test asks that each model scored was
    placed on the run's device (cpu) and sits there."""
    import workers.distill.evaluate as evaluate

    _run(tiny_config(), teacher_dir, train_examples, dev_examples, tmp_path, Recorder())

    placed: dict[int, torch.device] = {}
    real_to = torch.nn.Module.to

    def to(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            placed[id(self)] = torch.device(device)
        return real_to(self, *args, **kwargs)

    scored: list[tuple[torch.device | None, torch.device, set[torch.device]]] = []
    real_predict = evaluate.predict

    def predict(model, batches, *, device, input_map=None):  # noqa: ANN001, ANN202
        devices = {p.device for p in model.parameters()}
        scored.append((placed.get(id(model)), device, devices))
        return real_predict(model, batches, device=device, input_map=input_map)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    monkeypatch.setattr(evaluate, "predict", predict)
    rec = Recorder()
    _run(tiny_config(), teacher_dir, train_examples, dev_examples, tmp_path, rec)
    assert not [p for p in rec.progress if p.losses]  # every stage was skipped
    cpu = torch.device("cpu")
    assert scored == [(cpu, cpu, {cpu}), (cpu, cpu, {cpu})]  # teacher, then student
