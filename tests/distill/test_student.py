from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from contract.config import DistillConfig
from tests.factories import save_tiny_bert
from workers.distill.errors import DistillError
from workers.distill.student import Projections, build_student
from workers.distill.teacher import load_teacher


def test_student_from_teacher_layers_copies_the_mapped_layers(teacher_dir: Path) -> None:
    teacher = load_teacher(str(teacher_dir), task="classification", train_labels=["neg", "pos"])
    config = DistillConfig.model_validate(
        {
            "student": {
                "preset": None,
                "num_layers": 2,
                "hidden_size": 32,
                "num_attention_heads": 4,
                "intermediate_size": 64,
            }
        }
    )
    student = build_student(config, teacher=teacher)
    t_layers, s_layers = teacher.model.bert.encoder.layer, student.bert.encoder.layer
    for m, g in enumerate([2, 4]):  # uniform 4 -> 2
        for (name, p_s), p_t in zip(
            s_layers[m].named_parameters(), t_layers[g - 1].parameters(), strict=True
        ):
            assert torch.equal(p_s, p_t), name
    assert torch.equal(student.classifier.weight, teacher.model.classifier.weight)
    assert student.config.num_hidden_layers == 2 and student.config.id2label == {0: "neg", 1: "pos"}


def test_presets_build_their_shapes(teacher_dir: Path) -> None:
    teacher = load_teacher(str(teacher_dir), task="classification", train_labels=["neg", "pos"])
    config = DistillConfig.model_validate({"student": {"preset": "bert-2l-128d"}})
    student = build_student(config, teacher=teacher)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
        2,
        128,
        2,
        512,
    )


def test_student_from_another_model(tmp_path: Path, vocab: list[str], teacher_dir: Path) -> None:
    init = save_tiny_bert(
        tmp_path / "init", vocab, head=None, layers=1, hidden=8, heads=2, intermediate=16
    )
    teacher = load_teacher(str(teacher_dir), task="classification", train_labels=["neg", "pos"])
    base = AutoModel.from_pretrained(init)
    # the config names the model as the user wrote it; the caller says where it found it
    named = DistillConfig.model_validate({"student": {"init": "model", "init_model": "mdl_x"}})
    student = build_student(named, teacher=teacher, init_model=str(init))
    assert torch.equal(
        student.bert.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight
    )
    # the CLI's case: the config's init_model is itself a folder
    local = DistillConfig.model_validate({"student": {"init": "model", "init_model": str(init)}})
    student = build_student(local, teacher=teacher)
    assert torch.equal(
        student.bert.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight
    )


def test_student_from_a_checkpoint_takes_its_weights(tmp_path: Path, teacher_dir: Path) -> None:
    from workers.distill import checkpoint as ckpt_io

    teacher = load_teacher(str(teacher_dir), task="classification", train_labels=["neg", "pos"])
    shape = {
        "preset": None,
        "num_layers": 1,
        "hidden_size": 16,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "init": "random",
    }
    torch.manual_seed(1)
    source = build_student(
        DistillConfig.model_validate({"student": shape}),
        teacher=teacher,
    )
    path = ckpt_io.save(
        tmp_path,
        ckpt_io.Checkpoint(
            fingerprint="x",
            config_json="{}",
            stage_index=1,
            stage_step=0,
            global_step=7,
            student={k: v.clone() for k, v in source.state_dict().items()},
        ),
    )
    config = DistillConfig.model_validate({"student": shape})
    torch.manual_seed(2)  # a different random start, overwritten by the checkpoint
    student = build_student(config, teacher=teacher, init_checkpoint=path)
    for name, tensor in source.state_dict().items():
        assert torch.equal(student.state_dict()[name], tensor), name
    # a config from before init_checkpoint existed says the same in init/init_model
    legacy = DistillConfig.model_validate(
        {"student": {**shape, "init": "checkpoint", "init_model": str(path)}}
    )
    student = build_student(legacy, teacher=teacher)
    for name, tensor in source.state_dict().items():
        assert torch.equal(student.state_dict()[name], tensor), name

    other = DistillConfig.model_validate({"student": {**shape, "hidden_size": 8}})
    with pytest.raises(DistillError) as info:
        build_student(other, teacher=teacher, init_checkpoint=path)
    assert info.value.code == "checkpoint_mismatch"


def test_projections_start_at_identity_for_equal_widths() -> None:
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(Projections(8, 8).hidden(x), x)
    assert Projections(4, 8).hidden(torch.randn(2, 3, 4)).shape == (2, 3, 8)


def test_narrower_student_is_sliced_from_the_teacher(teacher_dir: Path) -> None:
    """Weight selection: one index set per kind of axis, per head for attention features."""
    teacher = load_teacher(str(teacher_dir), task="classification", train_labels=["neg", "pos"])
    config = DistillConfig.model_validate(
        {
            "student": {
                "preset": None,
                "num_layers": 2,
                "hidden_size": 24,
                "num_attention_heads": 4,
                "intermediate_size": 40,
                "init": "teacher_select",
            }
        }
    )
    student = build_student(config, teacher=teacher)
    hidden = torch.arange(24)
    heads = torch.tensor([h * 8 + i for h in range(4) for i in range(6)])  # head dim 8 -> 6
    inner = torch.arange(40)
    t_layers, s_layers = teacher.model.bert.encoder.layer, student.bert.encoder.layer
    for m, g in enumerate([2, 4]):
        s, t = s_layers[m], t_layers[g - 1]
        for name in ("query", "key", "value"):
            lin_s, lin_t = getattr(s.attention.self, name), getattr(t.attention.self, name)
            assert torch.equal(lin_s.weight, lin_t.weight[heads][:, hidden])
            assert torch.equal(lin_s.bias, lin_t.bias[heads])
        assert torch.equal(
            s.attention.output.dense.weight, t.attention.output.dense.weight[hidden][:, heads]
        )
        assert torch.equal(
            s.intermediate.dense.weight, t.intermediate.dense.weight[inner][:, hidden]
        )
        assert torch.equal(s.output.dense.weight, t.output.dense.weight[hidden][:, inner])
        assert torch.equal(s.output.LayerNorm.weight, t.output.LayerNorm.weight[hidden])
    s_emb, t_emb = student.bert.embeddings, teacher.model.bert.embeddings
    assert torch.equal(s_emb.word_embeddings.weight, t_emb.word_embeddings.weight[:, hidden])
    assert torch.equal(student.classifier.weight, teacher.model.classifier.weight[:, hidden])


def test_same_width_selection_is_an_exact_copy(teacher_dir: Path) -> None:
    teacher = load_teacher(str(teacher_dir), task="classification", train_labels=["neg", "pos"])
    shape = {
        "preset": None,
        "num_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "intermediate_size": 64,
    }
    copied, selected = (
        build_student(
            DistillConfig.model_validate({"student": {**shape, "init": init}}),
            teacher=teacher,
        )
        for init in ("teacher_layers", "teacher_select")
    )
    for (name, a), b in zip(
        copied.state_dict().items(), selected.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    ("init", "shape"),
    [
        ("teacher_layers", {"hidden_size": 24, "intermediate_size": 40}),  # narrower: select
        ("teacher_select", {"hidden_size": 48, "intermediate_size": 64}),  # wider than teacher
    ],
)
def test_teacher_init_refuses_shapes_it_cannot_fill(
    teacher_dir: Path, init: str, shape: dict[str, int]
) -> None:
    teacher = load_teacher(str(teacher_dir), task="classification", train_labels=["neg", "pos"])
    config = DistillConfig.model_validate(
        {
            "student": {
                "preset": None,
                "num_layers": 2,
                "num_attention_heads": 4,
                "init": init,
                **shape,
            }
        }
    )
    with pytest.raises(DistillError) as caught:
        build_student(config, teacher=teacher)
    assert caught.value.code == "student_init_invalid"


def test_auto_slices_a_narrower_student_and_leaves_a_wider_one_random(teacher_dir: Path) -> None:
    teacher = load_teacher(str(teacher_dir), task="classification", train_labels=["neg", "pos"])

    def build(init: str, hidden: int, intermediate: int) -> dict[str, torch.Tensor]:
        config = DistillConfig.model_validate(
            {
                "student": {
                    "preset": None,
                    "num_layers": 2,
                    "hidden_size": hidden,
                    "num_attention_heads": 4,
                    "intermediate_size": intermediate,
                    "init": init,
                }
            }
        )
        torch.manual_seed(0)
        return build_student(config, teacher=teacher).state_dict()

    auto, selected = build("auto", 24, 40), build("teacher_select", 24, 40)
    assert all(torch.equal(auto[k], selected[k]) for k in auto)
    wider_auto, wider_random = build("auto", 48, 96), build("random", 48, 96)
    assert all(torch.equal(wider_auto[k], wider_random[k]) for k in wider_auto)


def test_a_general_student_reused_by_a_task_job_keeps_its_projections(
    base_teacher_dir, teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    """W_e and W_h trained by a task: "general" job come along with its student (init_from),
    as TinyBERT's task distillation starts from the general model's."""
    from contract.records import Example
    from tests.factories import Recorder, tiny_config
    from workers.distill.checkpoint import checkpoint_dir, load_file
    from workers.distill.student import Projections, create_student
    from workers.distill.teacher import load_teacher
    from workers.distill.trainer import run
    from workers.distill.trim_vocab import StudentVocab

    run(
        tiny_config(task="general"),
        teacher=str(base_teacher_dir),
        train=[Example(e.text) for e in train_examples],
        validation=[Example(e.text) for e in dev_examples],
        workdir=tmp_path / "general",
        callbacks=Recorder(),
    )
    saved = checkpoint_dir(tmp_path / "general") / "last.pt"
    trained = load_file(saved).projections
    assert trained is not None
    fresh = Projections(16, 32).state_dict()
    assert any(not torch.equal(trained[k], fresh[k]) for k in fresh)  # they did learn

    teacher = load_teacher(str(teacher_dir), task="classification", train_labels=["neg", "pos"])
    student = create_student(
        tiny_config(),
        teacher=teacher,
        vocab=StudentVocab(teacher.tokenizer),
        device=torch.device("cpu"),
        init_checkpoint=saved,
    )
    got = student.projections.state_dict()
    assert all(torch.equal(got[k], trained[k]) for k in trained)
    body = load_file(saved).student
    assert body is not None  # a base model's tensors, under the task model's "bert."
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(student.model.state_dict()[f"bert.{key}"], body[key])


# --- narrow students that inherit from the teacher ------------------------------------------------


@pytest.fixture(scope="module")
def wide_heads_teacher_dir(tmp_path_factory: pytest.TempPathFactory, vocab: list[str]) -> Path:
    """2 layers, 12 heads of 32 (384 wide, as all-MiniLM-L6-v2), an FFN of 512."""
    return save_tiny_bert(
        tmp_path_factory.mktemp("teacher-12x32"),
        vocab,
        layers=2,
        hidden=384,
        heads=12,
        intermediate=512,
    )


def _calibration(teacher, examples) -> list[dict[str, torch.Tensor]]:
    from workers.distill.data import encode
    from workers.distill.selection import calibration_batches

    rows = encode(
        examples,
        teacher.tokenizer,
        max_length=64,
        task="classification",
        label2id={"neg": 0, "pos": 1},
    )
    return calibration_batches(rows, pad_id=0, seed=42)


def test_a_sliced_preset_keeps_whole_teacher_heads(wide_heads_teacher_dir: Path) -> None:
    """bert-2l-128d from a 12 x 32 teacher: 4 heads of 32, each an exact teacher head."""
    teacher = load_teacher(
        str(wide_heads_teacher_dir), task="classification", train_labels=["neg", "pos"]
    )
    config = DistillConfig.model_validate(
        {"student": {"preset": "bert-2l-128d", "init": "teacher_select", "select": "first"}}
    )
    student = build_student(config, teacher=teacher)
    c = student.config
    assert (c.hidden_size, c.num_attention_heads) == (128, 4)
    hidden = torch.arange(128)
    t_layers, s_layers = teacher.model.bert.encoder.layer, student.bert.encoder.layer
    for m, g in enumerate([1, 2]):
        for name in ("query", "key", "value"):
            w_s = getattr(s_layers[m].attention.self, name).weight
            w_t = getattr(t_layers[g - 1].attention.self, name).weight
            for h in range(4):  # student head h is teacher head h, all 32 of its rows
                rows = slice(h * 32, (h + 1) * 32)
                assert torch.equal(w_s[rows], w_t[rows][:, hidden]), (name, h)
    # a random-init student keeps the catalog's head count
    random = DistillConfig.model_validate({"student": {"preset": "bert-2l-128d", "init": "random"}})
    assert build_student(random, teacher=teacher).config.num_attention_heads == 2
    # an explicit head count is the user's
    explicit = DistillConfig.model_validate(
        {"student": {"preset": "bert-2l-128d", "num_attention_heads": 2}}
    )
    assert build_student(explicit, teacher=teacher).config.num_attention_heads == 2


def test_the_resolved_config_names_the_sliced_head_count(wide_heads_teacher_dir: Path) -> None:
    from workers.distill.student import with_student_heads

    teacher = load_teacher(
        str(wide_heads_teacher_dir), task="classification", train_labels=["neg", "pos"]
    )
    config = DistillConfig.model_validate({"student": {"preset": "bert-2l-128d"}})
    resolved = with_student_heads(config, teacher.model.config)
    assert resolved.student.dims() == (2, 128, 4, 512)
    assert with_student_heads(resolved, teacher.model.config) == resolved


def test_importance_keeps_the_features_the_teacher_uses_most(
    wide_heads_teacher_dir: Path, train_examples
) -> None:
    """Features made loud in a teacher are the ones a sliced student keeps, every time."""
    teacher = load_teacher(
        str(wide_heads_teacher_dir), task="classification", train_labels=["neg", "pos"]
    )
    loud_hidden = torch.tensor([3, 50, 77, 200, 381])
    loud_heads = [torch.tensor([1, 5, 9, 11]), torch.tensor([0, 2, 7, 10])]
    loud_inner = torch.tensor([10, 99, 300, 511])
    with torch.no_grad():
        bert = teacher.model.bert
        for norm in [bert.embeddings.LayerNorm] + [
            layer.output.LayerNorm for layer in bert.encoder.layer
        ]:
            norm.weight.copy_(1 + 1e-4 * torch.arange(384))  # distinct: traceable in the student
            norm.weight[loud_hidden] *= 20
        for layer, heads in zip(bert.encoder.layer, loud_heads, strict=True):
            value = layer.attention.self.value
            for h in heads:
                value.weight[h * 32 : (h + 1) * 32] *= 20
                value.bias[h * 32 : (h + 1) * 32] *= 20
            layer.intermediate.dense.bias.copy_(1e-4 * torch.arange(512))
            layer.intermediate.dense.bias[loud_inner] += 20
    config = DistillConfig.model_validate(
        {
            "student": {
                "preset": None,
                "num_layers": 2,
                "hidden_size": 128,
                "intermediate_size": 256,
                "num_attention_heads": 4,
                "init": "teacher_select",
                "select": "importance",
            }
        }
    )
    calibration = _calibration(teacher, train_examples)
    student = build_student(config, teacher=teacher, calibration=calibration)
    s_emb, t_emb = student.bert.embeddings, teacher.model.bert.embeddings
    kept = [
        int((t_emb.LayerNorm.weight == w).nonzero()[0]) for w in s_emb.LayerNorm.weight.tolist()
    ]
    assert kept == sorted(kept)  # the teacher's order
    assert set(loud_hidden.tolist()) <= set(kept)
    for s_layer, t_layer, heads in zip(
        student.bert.encoder.layer, bert.encoder.layer, loud_heads, strict=True
    ):
        hidden = torch.tensor(kept)
        w_s, w_t = s_layer.attention.self.value.weight, t_layer.attention.self.value.weight
        for slot, h in enumerate(heads.tolist()):
            rows_t = slice(h * 32, (h + 1) * 32)
            assert torch.equal(w_s[slot * 32 : (slot + 1) * 32], w_t[rows_t][:, hidden])
        b_s, b_t = s_layer.intermediate.dense.bias, t_layer.intermediate.dense.bias
        units = [int((b_t == b).nonzero()[0]) for b in b_s.tolist()]
        assert set(loud_inner.tolist()) <= set(units) and units == sorted(units)
    again = build_student(config, teacher=teacher, calibration=calibration)
    for (name, a), b in zip(student.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # "first" ignores the scores
    first = config.model_copy(
        update={"student": config.student.model_copy(update={"select": "first"})}
    )
    firsts = build_student(first, teacher=teacher, calibration=calibration)
    assert torch.equal(firsts.bert.embeddings.LayerNorm.weight, t_emb.LayerNorm.weight[:128])


def test_a_student_keeping_every_feature_computes_the_teacher(
    teacher_dir: Path, train_examples
) -> None:
    """Ranking by importance, then keeping all of it, is the teacher itself."""
    teacher = load_teacher(str(teacher_dir), task="classification", train_labels=["neg", "pos"])
    config = DistillConfig.model_validate(
        {
            "student": {
                "preset": None,
                "num_layers": 4,
                "hidden_size": 32,
                "num_attention_heads": 4,
                "intermediate_size": 64,
                "init": "teacher_select",
                "select": "importance",
            }
        }
    )
    calibration = _calibration(teacher, train_examples)
    student = build_student(config, teacher=teacher, calibration=calibration).eval()
    teacher.model.eval()
    batch = {k: v for k, v in calibration[0].items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, teacher.model(**batch).logits)


def test_importance_projections_map_each_feature_back_to_its_teacher_feature(
    wide_heads_teacher_dir: Path, train_examples
) -> None:
    from workers.distill.student import create_student
    from workers.distill.trim_vocab import StudentVocab

    teacher = load_teacher(
        str(wide_heads_teacher_dir), task="classification", train_labels=["neg", "pos"]
    )
    from workers.distill.data import encode

    rows = encode(
        train_examples,
        teacher.tokenizer,
        max_length=64,
        task="classification",
        label2id={"neg": 0, "pos": 1},
    )
    config = DistillConfig.model_validate(
        {"student": {"preset": "bert-2l-128d", "select": "importance"}}
    )
    student = create_student(
        config,
        teacher=teacher,
        vocab=StudentVocab(teacher.tokenizer),
        device=torch.device("cpu"),
        data=rows,
        pad_id=0,
    )
    s_norm = student.model.bert.embeddings.LayerNorm.weight
    t_norm = teacher.model.bert.embeddings.LayerNorm.weight
    x = torch.randn(1, 3, 128)
    back = student.projections.hidden(x)  # (1, 3, 384): zero but where a feature came from
    kept = back.abs().sum(dim=(0, 1)).nonzero().flatten()
    assert len(kept) == 128
    assert torch.equal(t_norm[kept], s_norm)


def test_a_listed_layer_map_chooses_the_teacher_layers(teacher_dir: Path) -> None:
    teacher = load_teacher(str(teacher_dir), task="classification", train_labels=["neg", "pos"])
    config = DistillConfig.model_validate(
        {
            "student": {
                "preset": None,
                "num_layers": 2,
                "hidden_size": 32,
                "num_attention_heads": 4,
                "intermediate_size": 64,
            },
            "distillation": {"layer_map": [1, 3]},
        }
    )
    student = build_student(config, teacher=teacher)
    t_layers, s_layers = teacher.model.bert.encoder.layer, student.bert.encoder.layer
    for m, g in enumerate([1, 3]):
        for p_s, p_t in zip(s_layers[m].parameters(), t_layers[g - 1].parameters(), strict=True):
            assert torch.equal(p_s, p_t)
    with pytest.raises(DistillError) as caught:
        build_student(
            config.model_copy(
                update={
                    "distillation": config.distillation.model_copy(update={"layer_map": [1, 9]})
                }
            ),
            teacher=teacher,
        )
    assert caught.value.code == "config_invalid"
