"""DistillConfig and friends: frozen pydantic models, JSON in and out; no torch, no transformers."""

from __future__ import annotations

import math
from typing import Annotated, Literal, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from contract.vocab import Task

PresetName = Literal["tinybert-4l-312d", "tinybert-6l-768d", "minilm-3l-384d", "bert-2l-128d"]
Schedule = Literal["linear", "cosine", "constant"]
LayerMapKind = Literal["uniform", "top", "bottom"]
TeacherLayer = Annotated[int, Field(ge=1, le=256)]


class StudentDims(NamedTuple):
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int


# The head counts are those of a student built from scratch. A student copied or sliced from the
# teacher (init teacher_layers / teacher_select, or auto when it is no wider) whose head count
# comes from its preset keeps whole teacher heads instead: hidden_size / the teacher's head
# width heads, when that divides (bert-2l-128d from a 12 x 32 teacher: 4 heads of 32, not 2 of
# 64 that would each mix two teacher heads). The resolved config says which.
PRESETS: dict[str, StudentDims] = {
    "tinybert-4l-312d": StudentDims(4, 312, 12, 1200),
    "tinybert-6l-768d": StudentDims(6, 768, 12, 3072),
    "minilm-3l-384d": StudentDims(3, 384, 12, 1536),
    "bert-2l-128d": StudentDims(2, 128, 2, 512),
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def _fail(self, loc: tuple[str | int, ...], message: str, value: object) -> ValidationError:
        """A ValidationError whose loc names the offending field, for a cross-field rule."""
        error = PydanticCustomError("value_error", message)
        details = InitErrorDetails(type=error, loc=loc, input=value)
        return ValidationError.from_exception_data(type(self).__name__, [details])


# Said in the job_created event of a job without `student`. The aim (issue 11) is the smallest
# student that keeps >= 95% of the teacher on the job's own validation rows; training several
# students per job to find it is not built, so the default is the preset measured best.
DEFAULT_STUDENT_WHY = (
    "no student in the request, so the default: tinybert-4l-312d, sliced from the teacher, "
    "which kept 94.7-99.6% of the teacher's accuracy on the quality benchmark's datasets "
    "(README), the most of any preset measured; smaller presets are not tried per job "
    "(bert-2l-128d, 8x faster, kept 69-97% there): name one in `student` to have it"
)


class StudentConfig(_Frozen):
    """The student's shape and where its first weights come from.

    A student copied or sliced from the teacher takes the teacher layers that
    distillation.layer_map names ("uniform", "top", "bottom" or a list of teacher layer
    numbers, 1-based, one per student layer). Without an explicit num_attention_heads it keeps
    whole teacher heads: hidden_size / the teacher's head width heads, when that divides
    (bert-2l-128d from a 12 x 32 teacher: 4 heads of 32). `select` says which teacher
    features a narrower student keeps: "importance" ranks residual features, heads (per layer)
    and feed-forward units (per layer) by their mean activation on a few seeded training
    batches; "first" takes the first ones. Kept indices stay in the teacher's order.
    """

    preset: PresetName | None = "tinybert-4l-312d"
    num_layers: int | None = Field(default=None, ge=1, le=48)
    hidden_size: int | None = Field(default=None, ge=8, le=8192)
    num_attention_heads: int | None = Field(default=None, ge=1, le=128)
    intermediate_size: int | None = Field(default=None, ge=8, le=32768)
    # auto = teacher_layers when the widths match the teacher's, teacher_select when the
    # student is narrower, else random; teacher_select = teacher_layers sliced to a narrower
    # student (weight selection);
    # checkpoint = the student weights of a checkpoint file (the service's init_from)
    init: Literal["auto", "random", "teacher_layers", "teacher_select", "model", "checkpoint"] = (
        "auto"
    )
    init_model: str | None = Field(default=None, min_length=1, max_length=500)
    # "first" by default, as measured on the default job (bench/e2e.py, 250 rt-polarity rows,
    # tinybert-4l-312d): "importance" lost 0.8 points of dev and 2.0 of test accuracy there
    # (0.676 / 0.684 against 0.684 / 0.704). On bert-2l-128d sliced from all-MiniLM-L6-v2
    # (2000 rt-polarity rows, seq 64, 10 + 3 epochs) it gained: 0.658 / 0.656 test accuracy
    # (macro-F1 0.615 / 0.619) at seeds 42 / 7 against 0.643 / 0.646 (0.580 / 0.588). Two
    # single runs each way: not yet enough to make it the default.
    select: Literal["importance", "first"] = "first"
    trim_vocab: bool = False

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.init == "model":
            if self.init_model is None:
                raise self._fail(("init_model",), "init='model' needs init_model", None)
            return self
        if self.init == "checkpoint" and self.init_model is None:
            raise self._fail(("init_model",), "init='checkpoint' needs init_model", None)
        if self.init_model is not None and self.init != "checkpoint":
            raise self._fail(
                ("init_model",), "init_model is only used with init='model'", self.init_model
            )
        if self.preset is None:
            missing = [
                name
                for name in (
                    "num_layers",
                    "hidden_size",
                    "num_attention_heads",
                    "intermediate_size",
                )
                if getattr(self, name) is None
            ]
            if missing:
                raise self._fail((missing[0],), "required when preset is null", None)
        dims = self.dims()
        if dims.hidden_size % dims.num_attention_heads:
            raise self._fail(
                ("num_attention_heads",),
                f"num_attention_heads ({dims.num_attention_heads}) must divide "
                f"hidden_size ({dims.hidden_size})",
                dims.num_attention_heads,
            )
        return self

    def dims(self) -> StudentDims:
        """The preset's dimensions with every explicit field laid over them."""
        base = PRESETS[self.preset] if self.preset else StudentDims(0, 0, 0, 0)
        return StudentDims(
            self.num_layers or base.num_layers,
            self.hidden_size or base.hidden_size,
            self.num_attention_heads or base.num_attention_heads,
            self.intermediate_size or base.intermediate_size,
        )


class Hyperparameters(_Frozen):
    """The simple knobs: they drive the prediction stage and are what other stages inherit."""

    epochs: int | None = Field(default=None, ge=1, le=1000)
    learning_rate: float | None = Field(default=None, gt=0.0, le=1.0)
    batch_size: int = Field(default=32, ge=1, le=4096)
    max_seq_length: int = Field(default=128, ge=8, le=8192)
    temperature: float = Field(default=1.0, gt=0.0, le=100.0)
    warmup_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    weight_decay: float = Field(default=0.01, ge=0.0, le=1.0)
    # bf16 autocast, fp32 master weights. auto: on a GPU that supports it and on a CPU with
    # bf16 matrix instructions (AMX or AVX512-BF16), where a distillation step ran 1.6x faster
    # on this project's AVX512-BF16 machine (a forward + backward 1.8x); off: float32.
    bf16: Literal["auto", "on", "off"] = "auto"


class StageConfig(_Frozen):
    """Optional per-stage overrides; None inherits from Hyperparameters, then the recipe."""

    enabled: bool = True
    epochs: int | None = Field(default=None, ge=1, le=1000)
    learning_rate: float | None = Field(default=None, gt=0.0, le=1.0)
    warmup_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    schedule: Schedule | None = None


class LossWeights(_Frozen):
    embedding: float = Field(default=1.0, ge=0.0, le=1000.0)
    attention: float = Field(default=1.0, ge=0.0, le=1000.0)
    hidden: float = Field(default=1.0, ge=0.0, le=1000.0)
    prediction: float = Field(default=1.0, ge=0.0, le=1000.0)
    # Soft cross-entropy plus the labels, as the service promises; 0 is the paper's pure KD.
    hard_label: float = Field(default=1.0, ge=0.0, le=1000.0)
    regression: float = Field(default=1.0, ge=0.0, le=1000.0)


class AugmentationConfig(_Frozen):
    """TinyBERT data augmentation: masked-LM replacement of single-piece words."""

    enabled: bool = False
    mlm_model: str | None = Field(default=None, min_length=1, max_length=500)
    p_t: float = Field(default=0.4, ge=0.0, le=1.0)
    n_a: int = Field(default=20, ge=1, le=1000)
    k: int = Field(default=15, ge=1, le=1000)
    batch_size: int = Field(default=64, ge=1, le=4096)
    max_examples: int = Field(default=1_000_000, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.enabled and self.mlm_model is None:
            raise self._fail(("mlm_model",), "augmentation needs a masked-LM path or hub id", None)
        return self


class TeacherCacheConfig(_Frozen):
    """The teacher's targets computed once per stage and read back every epoch.

    auto keeps them in memory within memory_mb, else in a file in the run's folder, else
    (too little disk) recomputes them every step. Logits are always kept in memory.
    """

    mode: Literal["auto", "memory", "disk", "off"] = "auto"
    memory_mb: int = Field(default=2048, ge=0, le=65_536)


class CollapseGuardConfig(_Frozen):
    """After the task stages, a classifier student that predicts one class for more than 95% of
    the validation rows, where the teacher does not, has collapsed: the job warns and, while
    rungs and budget remain, runs its task stages again from where the student is, the first of
    them 2**rung times as long (the collapses measured here were an intermediate stage too short
    to get past one fixed output: README, "why random starts collapse")."""

    enabled: bool = True
    max_rungs: int = Field(default=2, ge=0, le=5)
    # the steps all rungs together may add, as a multiple of the task stages' planned steps
    budget: float = Field(default=4.0, ge=0.0, le=100.0)


class DistillationConfig(_Frozen):
    general: StageConfig = Field(
        default=StageConfig(enabled=False),
        description=(
            'With task "general": general distillation (intermediate losses only) of a base '
            "teacher on a text-only dataset, the only stage; its student, W_e and W_h "
            "included, can start a task job (student.init_from). Enabled in a task job it is "
            "not TinyBERT's general distillation: it runs the same intermediate losses on the "
            "job's own training rows (no augmented copies), with the teacher fine-tuned first, "
            "as a warm-up before intermediate_distill."
        ),
    )
    intermediate: StageConfig = StageConfig()
    prediction: StageConfig = StageConfig()
    # runs only when the teacher has no head for the labels
    teacher_finetune: StageConfig = StageConfig()
    layer_map: LayerMapKind | list[TeacherLayer] = "uniform"
    # relation = MiniLMv2 self-attention relations; auto picks it when head counts differ
    attention_loss: Literal["auto", "mse", "relation"] = "auto"
    relation_heads: int | None = Field(default=None, ge=1, le=256)
    weights: LossWeights = LossWeights()
    augmentation: AugmentationConfig = AugmentationConfig()
    teacher_cache: TeacherCacheConfig = TeacherCacheConfig()
    collapse_guard: CollapseGuardConfig = CollapseGuardConfig()


class ExportConfig(_Frozen):
    onnx: bool = True
    int8: bool = True
    opset: int = Field(default=17, ge=14, le=21)
    # timed forward passes per latency figure, after one warm-up
    latency_runs: int = Field(default=20, ge=1, le=10_000)
    # the speed block's inputs: this many real tokens a row (cut to the models' position limit)
    speed_seq_len: int = Field(default=128, ge=8, le=8192)
    # timed batch-32 passes per throughput figure, after one warm-up; batch 1 takes latency_runs
    throughput_runs: int = Field(default=5, ge=1, le=10_000)


class DistillConfig(_Frozen):
    task: Task = "classification"
    student: StudentConfig = StudentConfig()
    hyperparameters: Hyperparameters = Hyperparameters()
    distillation: DistillationConfig = DistillationConfig()
    export: ExportConfig = ExportConfig()
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    checkpoint_every_steps: int = Field(default=500, ge=1, le=10_000_000)
    log_every_steps: int = Field(default=50, ge=1, le=10_000_000)
    validation_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The first precision switch, kept for configs written with it: False means float32
    # whatever hyperparameters.bf16 says; True leaves the choice to hyperparameters.bf16.
    bf16: bool = True

    @model_validator(mode="after")
    def _check(self) -> Self:
        layer_map = self.distillation.layer_map
        if isinstance(layer_map, list) and self.student.init != "model":
            num_layers = self.student.dims().num_layers
            if len(layer_map) != num_layers:
                raise self._fail(
                    ("distillation", "layer_map"),
                    f"lists {len(layer_map)} teacher layers for a student with {num_layers}",
                    layer_map,
                )
        d, w = self.distillation, self.distillation.weights
        teacher_weight = w.regression if self.task == "regression" else w.prediction
        if self.task != "general" and d.prediction.enabled and teacher_weight + w.hard_label == 0:
            raise self._fail(
                ("distillation", "weights"),
                "the prediction stage needs a teacher term or hard_label above 0",
                w.model_dump(),
            )
        return self

    def resolved(
        self,
        *,
        num_train_examples: int,
        teacher_width: int | None = None,
        num_task_examples: int | None = None,
    ) -> DistillConfig:
        """A copy with every None filled from the recipe, scaled to the dataset size (the
        teacher's fine-tuning rate to the teacher's width, once that is known; the task stages'
        epochs to the augmented set, once augmentation has made it)."""
        return resolve(
            self,
            num_train_examples=num_train_examples,
            teacher_width=teacher_width,
            num_task_examples=num_task_examples,
        )


# --- the default recipe --------------------------------------------------------------------------
# TinyBERT: task distillation 20 epochs of intermediate layers (lr 5e-5) then 3 of prediction
# (lr 3e-5), batch 32, warm-up 10%; general distillation 3 epochs at 1e-4; the teacher's own
# fine-tuning 3 epochs at 2e-5 as in BERT-base, at a rate that grows as the teacher narrows
# (teacher_finetune_rate). The paper's epoch counts assume GLUE-sized (and augmented) data, so
# the recipe bounds the steps: a small set gets more epochs so the student sees enough
# updates, a large one fewer so a job finishes.


class _StageRecipe(NamedTuple):
    epochs: int
    learning_rate: float
    min_steps: int
    max_steps: int
    max_epochs: int


RECIPE: dict[str, _StageRecipe] = {
    "teacher_finetune": _StageRecipe(3, 2e-5, 300, 20_000, 20),
    "general": _StageRecipe(3, 1e-4, 500, 100_000, 20),
    "intermediate": _StageRecipe(20, 5e-5, 1_000, 50_000, 50),
    "prediction": _StageRecipe(3, 3e-5, 300, 20_000, 20),
}
RECIPE_WARMUP_RATIO = 0.1
RECIPE_SCHEDULE: Schedule = "linear"


def recipe_epochs(stage: str, *, num_examples: int, batch_size: int) -> int:
    """The paper's epochs for a stage, bounded so the stage runs min_steps..max_steps steps."""
    r = RECIPE[stage]
    steps_per_epoch = max(1, math.ceil(num_examples / batch_size))
    epochs = min(r.epochs, max(1, r.max_steps // steps_per_epoch))
    return max(epochs, min(r.max_epochs, math.ceil(r.min_steps / steps_per_epoch)))


# Fine-tuning rates by teacher width: BERT-base's 2e-5 from 768 wide up; 1e-4 at 384 and below,
# measured on all-MiniLM-L6-v2 (6 layers, 384 wide): at 2e-5 for 2 epochs it reached 0.800 on
# rt-polarity and macro-F1 0.532 on r8 (a TF-IDF SVM: 0.921), at 1e-4 for 3 epochs 0.837 and
# 0.922 (bench/quality.py). Between the two widths the rate is interpolated geometrically.
TEACHER_RATE_WIDE = (768, 2e-5)
TEACHER_RATE_NARROW = (384, 1e-4)


def teacher_finetune_rate(width: int) -> float:
    """The recipe's fine-tuning rate at batch 32 for a teacher `width` wide."""
    (wide, wide_rate), (narrow, narrow_rate) = TEACHER_RATE_WIDE, TEACHER_RATE_NARROW
    if width >= wide:
        return wide_rate
    if width <= narrow:
        return narrow_rate
    t = math.log(width / narrow) / math.log(wide / narrow)
    return float(narrow_rate * (wide_rate / narrow_rate) ** t)


def recipe_learning_rate(stage: str, *, batch_size: int, teacher_width: int | None = None) -> float:
    """The paper's rate at batch 32 (the teacher's by its width), square-root scaled to
    another batch size."""
    rate = RECIPE[stage].learning_rate
    if stage == "teacher_finetune" and teacher_width is not None:
        rate = teacher_finetune_rate(teacher_width)
    return rate * math.sqrt(batch_size / 32)


def resolve(
    config: DistillConfig,
    *,
    num_train_examples: int,
    teacher_width: int | None = None,
    num_task_examples: int | None = None,
) -> DistillConfig:
    """Every unset stage value from Hyperparameters, then the recipe. The teacher's
    fine-tuning rate is its own: its stage's value, else the recipe's for `teacher_width`; it
    stays None while the width is unknown (a hub teacher before a worker has loaded it).

    The intermediate and prediction stages train on `num_task_examples` rows: the training set
    plus its augmented copies (up to n_a a row), so their step bounds are taken from that
    count. With augmentation on and the count not yet known (the API, before a worker has
    augmented), their epochs stay None for the worker to fill in."""
    if num_train_examples < 1:
        raise ValueError("num_train_examples must be at least 1")
    hp = config.hyperparameters
    n, bs = num_train_examples, hp.batch_size
    augmenting = config.task != "general" and config.distillation.augmentation.enabled
    n_task = num_task_examples
    if n_task is None and not augmenting:
        n_task = n

    def rate(name: str, s: StageConfig) -> float | None:
        if s.learning_rate is not None:
            return s.learning_rate
        if name == "teacher_finetune":
            # hyperparameters.learning_rate is the student's: a teacher of another width
            # wants another rate, so it is not inherited here.
            if teacher_width is None:
                return None
            return recipe_learning_rate(name, batch_size=bs, teacher_width=teacher_width)
        return hp.learning_rate or recipe_learning_rate(name, batch_size=bs)

    def stage(name: str, s: StageConfig, rows: int | None = n) -> StageConfig:
        recipe = recipe_epochs(name, num_examples=rows, batch_size=bs) if rows else None
        return s.model_copy(
            update={
                "epochs": s.epochs or hp.epochs or recipe,
                "learning_rate": rate(name, s),
                "warmup_ratio": _first(s.warmup_ratio, hp.warmup_ratio, RECIPE_WARMUP_RATIO),
                "schedule": s.schedule or RECIPE_SCHEDULE,
            }
        )

    d = config.distillation
    prediction = stage("prediction", d.prediction, n_task)
    distillation = d.model_copy(
        update={
            "general": stage("general", d.general),
            "intermediate": stage("intermediate", d.intermediate, n_task),
            "prediction": prediction,
            "teacher_finetune": stage("teacher_finetune", d.teacher_finetune),
        }
    )
    hyperparameters = hp.model_copy(
        update={
            "epochs": prediction.epochs,
            "learning_rate": prediction.learning_rate,
            "warmup_ratio": prediction.warmup_ratio,
        }
    )
    return config.model_copy(
        update={"distillation": distillation, "hyperparameters": hyperparameters}
    )


def _first(*values: float | None) -> float:
    for v in values:
        if v is not None:
            return v
    raise ValueError("no value")
