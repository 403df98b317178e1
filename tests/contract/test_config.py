import pytest
from pydantic import ValidationError

from contract.config import (
    PRESETS,
    DistillConfig,
    Hyperparameters,
    StudentConfig,
    recipe_epochs,
    teacher_finetune_rate,
)


def _locs(raw: dict) -> list[tuple]:
    with pytest.raises(ValidationError) as info:
        DistillConfig.model_validate(raw)
    return [e["loc"] for e in info.value.errors()]


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        ({"hyperparameters": {"batch_size": 0}}, ("hyperparameters", "batch_size")),
        ({"hyperparameters": {"temperature": -1}}, ("hyperparameters", "temperature")),
        ({"student": {"preset": "huge"}}, ("student", "preset")),
        ({"student": {"hidden_size": 100}}, ("student", "num_attention_heads")),
        ({"student": {"preset": None, "num_layers": 2}}, ("student", "hidden_size")),
        ({"student": {"init": "model"}}, ("student", "init_model")),
        ({"distillation": {"layer_map": [1, 2]}}, ("distillation", "layer_map")),
        ({"distillation": {"layer_map": [0, 1, 2, 3]}}, ("distillation", "layer_map")),
        (
            {"distillation": {"augmentation": {"enabled": True}}},
            ("distillation", "augmentation", "mlm_model"),
        ),
        ({"distillation": {"augmentation": {"p_t": 1.5}}}, ("distillation", "augmentation", "p_t")),
        (
            {"distillation": {"prediction": {"schedule": "step"}}},
            ("distillation", "prediction", "schedule"),
        ),
        (
            {"distillation": {"weights": {"prediction": 0, "hard_label": 0}}},
            ("distillation", "weights"),
        ),
        ({"seed": -1}, ("seed",)),
        ({"surprise": 1}, ("surprise",)),
    ],
)
def test_bad_values_raise_with_the_field_loc(raw: dict, loc: tuple) -> None:
    # a union field adds its member's tag after the field name; the field itself leads
    assert any(found[: len(loc)] == loc for found in _locs(raw)), _locs(raw)


def test_presets_match_the_papers_shapes() -> None:
    assert PRESETS["tinybert-4l-312d"] == (4, 312, 12, 1200)
    assert PRESETS["tinybert-6l-768d"] == (6, 768, 12, 3072)
    assert PRESETS["minilm-3l-384d"] == (3, 384, 12, 1536)
    assert PRESETS["bert-2l-128d"] == (2, 128, 2, 512)
    assert StudentConfig(num_layers=3).dims() == (3, 312, 12, 1200)


def test_config_is_frozen_and_round_trips_through_json() -> None:
    config = DistillConfig.model_validate({"distillation": {"layer_map": [3, 6, 9, 12]}})
    assert DistillConfig.model_validate_json(config.model_dump_json()) == config
    with pytest.raises(ValidationError):
        config.seed = 1  # type: ignore[misc]


def test_resolved_fills_every_none_and_keeps_explicit_values() -> None:
    config = DistillConfig(hyperparameters=Hyperparameters(learning_rate=1e-4))
    resolved = config.resolved(num_train_examples=10_000, teacher_width=768)
    d = resolved.distillation
    for stage in (d.general, d.intermediate, d.prediction, d.teacher_finetune):
        assert None not in (stage.epochs, stage.learning_rate, stage.warmup_ratio, stage.schedule)
    assert resolved.hyperparameters.learning_rate == 1e-4
    assert d.intermediate.learning_rate == 1e-4  # stages inherit the simple knobs
    assert d.teacher_finetune.learning_rate == 2e-5  # ...but the teacher's rate is its own
    assert d.intermediate.epochs == 20 and d.prediction.epochs == 3  # the paper's, at GLUE size
    assert resolved.hyperparameters.epochs == d.prediction.epochs
    assert resolved.resolved(num_train_examples=10_000, teacher_width=768) == resolved


def test_teacher_rate_follows_the_teachers_width() -> None:
    assert teacher_finetune_rate(1024) == teacher_finetune_rate(768) == 2e-5  # BERT-base's
    assert teacher_finetune_rate(128) == teacher_finetune_rate(384) == 1e-4  # measured
    assert 2e-5 < teacher_finetune_rate(512) < teacher_finetune_rate(448) < 1e-4
    # 384·√2 is halfway between the two widths in log scale: the rates' geometric mean
    assert teacher_finetune_rate(543) == pytest.approx((2e-5 * 1e-4) ** 0.5, rel=1e-3)

    def teacher_rate(raw: dict, width: int | None, batch_size: int = 32) -> float | None:
        config = DistillConfig.model_validate(
            {**raw, "hyperparameters": {**raw.get("hyperparameters", {}), "batch_size": batch_size}}
        )
        resolved = config.resolved(num_train_examples=1000, teacher_width=width)
        return resolved.distillation.teacher_finetune.learning_rate

    assert teacher_rate({}, 384) == 1e-4
    assert teacher_rate({}, 384, batch_size=128) == pytest.approx(2e-4)  # sqrt(batch/32)
    assert teacher_rate({}, None) is None  # a hub teacher, before a worker has loaded it
    assert teacher_rate({"hyperparameters": {"learning_rate": 0.5}}, None) is None
    explicit = {"distillation": {"teacher_finetune": {"learning_rate": 3e-3}}}
    assert teacher_rate(explicit, None) == teacher_rate(explicit, 384) == 3e-3


def test_recipe_scales_epochs_to_the_dataset_size() -> None:
    small = recipe_epochs("prediction", num_examples=100, batch_size=32)
    large = recipe_epochs("intermediate", num_examples=5_000_000, batch_size=32)
    assert small > 3  # a tiny set gets more passes to reach the minimum number of steps
    assert large == 1  # a huge set is capped by the step budget


def test_task_stage_epochs_wait_for_the_augmented_count() -> None:
    """The API cannot know how many copies a worker's augmentation makes: the task stages'
    epochs stay unset until the worker resolves them with the augmented count."""
    augmentation = {"enabled": True, "mlm_model": "some/mlm"}
    config = DistillConfig.model_validate({"distillation": {"augmentation": augmentation}})
    api = config.resolved(num_train_examples=1000, teacher_width=384)
    d = api.distillation
    assert d.intermediate.epochs is None and d.prediction.epochs is None
    assert d.teacher_finetune.epochs == recipe_epochs(
        "teacher_finetune", num_examples=1000, batch_size=32
    )
    worker = api.resolved(num_train_examples=1000, teacher_width=384, num_task_examples=21_000)
    assert worker.distillation.intermediate.epochs == recipe_epochs(
        "intermediate", num_examples=21_000, batch_size=32
    )
    assert worker.hyperparameters.epochs == worker.distillation.prediction.epochs
