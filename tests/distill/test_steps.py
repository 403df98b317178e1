"""A step's loss terms against the mistakes that keep every loss finite: wrong layers, the wrong
projection, a missing division, a dropped term, a detached input, a teacher still in train mode.

Tiny BERTs are built in memory from BertConfig; a teacher and a student that are the same
weights give exact zeros where the losses compare the same thing.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from contract.config import DistillConfig
from workers.distill.features import Features
from workers.distill.losses import LOSSES, NO_CLASS
from workers.distill.steps import Sides, Step, distill_step, finetune_step, prediction_terms
from workers.distill.student import Projections, Student
from workers.distill.teacher import Teacher
from workers.distill.trim_vocab import StudentVocab

CPU = torch.device("cpu")
VOCAB = 60


def _bert(*, layers: int = 2, heads: int = 4, dropout: float = 0.0, seed: int = 0):  # noqa: ANN202
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=2,
        initializer_range=0.5,  # BERT's 0.02 leaves layers close to the identity: too forgiving
    )
    return BertForSequenceClassification(config)  # in train mode, as nn.Module starts


def _teacher(model: BertForSequenceClassification) -> Teacher:
    # a step never tokenises: the batches below are ids already
    return Teacher(model, None, "classification", ["neg", "pos"], has_head=True)  # type: ignore[arg-type]


def _student(model: BertForSequenceClassification, width_t: int = 16) -> Student:
    return Student(model, Projections(16, width_t), StudentVocab(None))  # type: ignore[arg-type]


def _batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Two rows, the second padded after 4 tokens."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    return {
        "input_ids": torch.randint(5, VOCAB, (2, 7), generator=g),
        "token_type_ids": torch.zeros(2, 7, dtype=torch.long),
        "attention_mask": mask,
        "labels": torch.tensor([0, 1]),
    }


def _config(**distillation: object) -> DistillConfig:
    return DistillConfig.model_validate({"distillation": distillation, "bf16": False})


def _step(stage: str, config: DistillConfig, teacher: Teacher, student: Student) -> Step:
    return distill_step(stage, config, teacher=teacher, student=student, device=CPU)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("teacher_layers", "layer_map"),
    [(2, "uniform"), (4, "bottom")],  # the whole teacher, or its bottom half under "bottom"
)
def test_a_copy_of_the_teacher_has_no_intermediate_loss(
    teacher_layers: int, layer_map: str
) -> None:
    """Student layer m is teacher layer g(m) exactly: embedding, hidden and attention are 0."""
    teacher = _bert(layers=teacher_layers)
    copied = copy.deepcopy(teacher)
    copied.bert.encoder.layer = copied.bert.encoder.layer[:2]
    copied.config.num_hidden_layers = 2
    step = _step(
        "intermediate_distill", _config(layer_map=layer_map), _teacher(teacher), _student(copied)
    )
    parts = step(_batch())
    assert set(parts) == {"embedding", "hidden", "attention", "total"}
    for name in ("embedding", "hidden", "attention", "total"):
        assert parts[name].item() == pytest.approx(0.0, abs=1e-10), name

    other = _step(
        "intermediate_distill",
        _config(layer_map=layer_map),
        _teacher(teacher),
        _student(_bert(seed=5)),
    )
    assert all(other(_batch())[name].item() > 1e-4 for name in ("embedding", "hidden", "attention"))


def test_a_teacher_copy_matched_to_other_layers_is_not_at_zero() -> None:
    """The same bottom-half copy under the uniform map (g = 2, 4) is compared with other layers."""
    teacher = _bert(layers=4)
    copied = copy.deepcopy(teacher)
    copied.bert.encoder.layer = copied.bert.encoder.layer[:2]
    copied.config.num_hidden_layers = 2
    parts = _step(
        "intermediate_distill", _config(layer_map="uniform"), _teacher(teacher), _student(copied)
    )(_batch())
    assert parts["embedding"].item() == pytest.approx(0.0, abs=1e-10)
    assert parts["hidden"].item() > 1e-3 and parts["attention"].item() > 1e-3


def test_hidden_states_go_through_w_h_and_embeddings_through_w_e() -> None:
    teacher = _bert()
    student = _student(copy.deepcopy(teacher))
    with torch.no_grad():
        student.projections.embedding.weight.mul_(2.0)  # W_e = 2 I, W_h = I
    parts = _step("intermediate_distill", _config(), _teacher(teacher), student)(_batch())
    assert parts["hidden"].item() == pytest.approx(0.0, abs=1e-10)
    assert parts["embedding"].item() > 1e-3

    with torch.no_grad():
        student.projections.embedding.weight.copy_(torch.eye(16))
        student.projections.hidden.weight.mul_(2.0)  # W_e = I, W_h = 2 I
    parts = _step("intermediate_distill", _config(), _teacher(teacher), student)(_batch())
    assert parts["embedding"].item() == pytest.approx(0.0, abs=1e-10)
    assert parts["hidden"].item() > 1e-3


def test_attention_gradient_reaches_the_students_query_and_key() -> None:
    teacher, student = _teacher(_bert()), _student(_bert(seed=5))
    config = _config(weights={"embedding": 0, "hidden": 0, "attention": 1})
    parts = _step("intermediate_distill", config, teacher, student)(_batch())
    assert set(parts) == {"attention", "total"}
    parts["total"].backward()
    for block in student.model.bert.encoder.layer:
        for lin in (block.attention.self.query, block.attention.self.key):
            assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    # the teacher gives targets only
    assert all(p.grad is None for p in teacher.model.parameters())


def test_attention_loss_with_several_heads_is_the_mean_over_heads_and_real_pairs() -> None:
    """Eq. 8 by hand from each layer's own query/key Linears: per head and pair of real tokens."""
    teacher, student = _teacher(_bert(heads=4)), _student(_bert(heads=4, seed=5))
    batch = _batch()
    config = _config(weights={"embedding": 0, "hidden": 0, "attention": 1})
    got = _step("intermediate_distill", config, teacher, student)(batch)["attention"]

    def scores(model: BertForSequenceClassification) -> list[torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            states = model.train(False)(**inputs, output_hidden_states=True).hidden_states
        out = []
        for block, x in zip(model.bert.encoder.layer, states, strict=False):  # input of block m
            q = block.attention.self.query(x).view(2, 7, 4, 4).transpose(1, 2)
            k = block.attention.self.key(x).view(2, 7, 4, 4).transpose(1, 2)
            out.append(q @ k.transpose(-1, -2) / math.sqrt(4))  # (b, H, L, L)
        return out

    real = [(b, i, j) for b, n in ((0, 7), (1, 4)) for i in range(n) for j in range(n)]
    expected = 0.0
    for a_s, a_t in zip(scores(student.model), scores(teacher.model), strict=True):
        sq = (a_s - a_t) ** 2
        per_head = [sum(sq[b, h, i, j].item() for b, i, j in real) / len(real) for h in range(4)]
        expected += sum(per_head) / 4
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_prediction_total_weighs_the_soft_cross_entropy_and_the_labels() -> None:
    teacher, student = _teacher(_bert()), _student(_bert(seed=5))
    config = DistillConfig.model_validate(
        {
            "distillation": {"weights": {"prediction": 2.0, "hard_label": 3.0}},
            "hyperparameters": {"temperature": 2.0},
            "bf16": False,
        }
    )
    batch = _batch()
    parts = _step("prediction_distill", config, teacher, student)(batch)
    assert set(parts) == {"prediction", "hard_label", "total"}

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        z_s, z_t = student.model(**inputs).logits, teacher.model(**inputs).logits
    soft = -(F.softmax(z_t / 2.0, -1) * F.log_softmax(z_s / 2.0, -1)).sum(-1).mean()
    hard = F.cross_entropy(z_s, batch["labels"])
    assert parts["prediction"].item() == pytest.approx(soft.item(), rel=1e-5)
    assert parts["hard_label"].item() == pytest.approx(hard.item(), rel=1e-5)
    # the soft term weighs T^2 = 4 times its weight (Hinton et al.)
    total = 2.0 * 4.0 * soft.item() + 3.0 * hard.item()
    assert parts["total"].item() == pytest.approx(total, rel=1e-5)


def test_the_soft_term_is_scaled_by_t_squared_by_hand() -> None:
    """Teacher logits (2, 0) and a uniform student at T = 2, labels weighing 0: the soft
    cross-entropy is -(p log .5 + (1 - p) log .5) = log 2 whatever p, and the total T^2 log 2."""
    config = DistillConfig.model_validate(
        {
            "distillation": {"weights": {"prediction": 1.0, "hard_label": 0.0}},
            "hyperparameters": {"temperature": 2.0},
        }
    )
    (term,) = prediction_terms(config, task="classification")
    logits_s = torch.zeros(1, 2)
    teacher = Features(logits=torch.tensor([[2.0, 0.0]]), hidden={}, qkv={})
    sides = Sides(Features(logits=logits_s, hidden={}, qkv={}), teacher, {})
    assert term(sides).item() == pytest.approx(0.6931472)  # log 2, as logged
    assert term.weight * term(sides).item() == pytest.approx(2.7725887)  # 4 log 2, in the total


def test_a_hard_label_never_reaches_an_augmented_row() -> None:
    """Augmented copies carry NO_CLASS: the labels term sees the gold rows only, and a batch of
    copies alone gives it nothing to learn from."""
    teacher, student = _teacher(_bert()), _student(_bert(seed=5))
    config = _config(weights={"prediction": 1.0, "hard_label": 1.0})
    step = _step("prediction_distill", config, teacher, student)
    mixed = _batch() | {"labels": torch.tensor([1, NO_CLASS])}
    inputs = {k: v for k, v in mixed.items() if k != "labels"}
    with torch.no_grad():
        z_s = student.model(**inputs).logits
    gold_only = F.cross_entropy(z_s[:1], torch.tensor([1]))
    assert step(mixed)["hard_label"].item() == pytest.approx(gold_only.item(), rel=1e-5)

    copies = _batch() | {"labels": torch.tensor([NO_CLASS, NO_CLASS])}
    hard = step(copies)["hard_label"]
    assert hard.item() == 0.0
    hard.backward()
    grads = [p.grad for p in student.model.parameters() if p.grad is not None]
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_a_gold_value_never_reaches_an_augmented_regression_row() -> None:
    config = _config(weights={"regression": 1.0, "hard_label": 1.0})
    terms = {t.name: t for t in prediction_terms(config, task="regression")}
    pred = torch.tensor([[1.0], [5.0]], requires_grad=True)
    values = torch.tensor([3.0, float("nan")])
    sides = Sides(Features(logits=pred, hidden={}, qkv={}), None, {"labels": values})
    hard = terms["hard_label"](sides)
    assert hard.item() == pytest.approx(4.0)  # (1 - 3)^2 over the one row with a value
    hard.backward()
    assert pred.grad is not None and pred.grad[1].item() == 0.0


@pytest.mark.parametrize("stage", ["intermediate_distill", "prediction_distill"])
def test_the_teacher_gives_the_same_targets_twice_despite_its_dropout(stage: str) -> None:
    """A teacher left in train mode (as fine-tuning leaves it) would drop out its targets."""
    teacher = _teacher(_bert(dropout=0.5))
    assert teacher.model.training
    step = _step(stage, _config(), teacher, _student(_bert(seed=5)))
    first, second = step(_batch()), step(_batch())
    assert not teacher.model.training
    for name in first:
        assert first[name].item() == second[name].item(), name


def test_the_loss_falls_over_a_short_run() -> None:
    teacher, student = _teacher(_bert()), _student(_bert(seed=5))
    config = _config()
    params = [*student.model.parameters(), *student.projections.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    totals = []
    for stage in ("intermediate_distill", "prediction_distill"):
        step = _step(stage, config, teacher, student)
        for _ in range(25):
            loss = step(_batch())["total"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals.append(loss.item())
        assert totals[-1] < 0.5 * totals[-25], (stage, totals[-25:])


def test_a_term_weighing_zero_costs_nothing() -> None:
    """Labels alone: no teacher forward pass, no hooks, one term."""
    teacher, student = _teacher(_bert()), _student(_bert(seed=5))
    step = _step("prediction_distill", _config(weights={"prediction": 0}), teacher, student)
    assert step.teacher is None and [t.name for t in step.terms] == ["hard_label"]
    assert set(step(_batch())) == {"hard_label", "total"}


def test_finetuning_trains_the_teachers_own_head_on_the_labels() -> None:
    teacher = _teacher(_bert(dropout=0.1))
    teacher.model.train(False)
    step = finetune_step(teacher, device=CPU, bf16=False)
    assert teacher.model.training  # dropout on while fine-tuning
    batch = _batch()
    parts = step(batch)
    assert set(parts) == {"task", "total"} and parts["total"].requires_grad
    assert parts["task"].item() > 0


def test_relation_terms_compare_query_key_and_value_across_head_counts() -> None:
    teacher, student = _teacher(_bert(heads=4)), _student(_bert(heads=2, seed=5))
    step = _step("intermediate_distill", _config(), teacher, student)
    (attention,) = [t for t in step.terms if t.name == "attention"]
    assert attention.loss == "relation_kl" and len(attention.pairs) == 2 * 3
    same = _step("intermediate_distill", _config(), teacher, _student(_bert(heads=4, seed=5)))
    assert [t.loss for t in same.terms if t.name == "attention"] == ["attention_mse"]
    assert step(_batch())["attention"].item() > 0


def test_the_loss_table_drives_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Terms name their loss; the step calls whatever LOSSES holds under that name."""
    calls: list[tuple[int, ...]] = []

    def fake(x_s: torch.Tensor, x_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x_t.shape))
        return torch.tensor(7.0)

    monkeypatch.setitem(LOSSES, "hidden_mse", fake)
    parts = _step("intermediate_distill", _config(), _teacher(_bert()), _student(_bert()))(_batch())
    # one embedding pair, two matched layers; each (b, L, d_t)
    assert calls == [(2, 7, 16)] * 3
    assert parts["embedding"].item() == 7.0 and parts["hidden"].item() == 14.0
