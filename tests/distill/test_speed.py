import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.factories import save_tiny_bert
from workers.distill.data import Encoded, collate, encode
from workers.distill.export import ONNX_INPUTS, export_onnx, onnx_session, speed_table
from workers.distill.speed import measure_speed, round_robin, speed_inputs, speedups

RUNTIMES = {"pytorch_fp32", "pytorch_bf16", "onnx", "onnx_int8"}
# Dynamic int8 against the fp32 graph, as a share of the largest fp32 output: measured 1-2% on
# these random tiny BERTs with earlier onnxruntime releases and 5.3% with 1.32.0 (a fresh install
# takes the newest: the floors are loose), their logits all close to 0 (so an absolute bound
# says little). A broken quantisation is off by the output's own size (100%), not by 10%.
INT8_RELATIVE_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def models(tmp_path_factory, teacher_dir, vocab):  # noqa: ANN001, ANN201
    student_dir = save_tiny_bert(tmp_path_factory.mktemp("student"), vocab, layers=2, seed=1)
    load = AutoModelForSequenceClassification.from_pretrained
    return load(student_dir).eval(), load(teacher_dir).eval()


@pytest.fixture(scope="module")
def pool(teacher_dir, dev_examples) -> list[Encoded]:  # noqa: ANN001
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    label2id = {"neg": 0, "pos": 1}
    return encode(dev_examples, tokenizer, max_length=64, task="classification", label2id=label2id)


@pytest.fixture(scope="module")
def onnx_files(models, pool, tmp_path_factory) -> dict[str, Path]:  # noqa: ANN001
    student, _ = models
    sample, check = (collate(pool[a:b], pad_id=0) for a, b in ((0, 3), (3, 7)))
    files, _ = export_onnx(
        student, tmp_path_factory.mktemp("onnx"), sample=sample, check=check, opset=17, int8=True
    )
    return dict(zip(("onnx", "onnx_int8"), files, strict=True))


def test_every_runtime_of_both_models_is_timed_with_positive_figures(
    models, pool, onnx_files
) -> None:
    student, teacher = models
    speed = measure_speed(
        student,
        teacher,
        pool=pool,
        input_map=None,
        onnx=onnx_files,
        seq_len=200,  # beyond the tiny BERTs' 128 positions: cut, and said so
        latency_runs=3,
        throughput_runs=2,
    )
    assert speed["seq_len"] == 128 and speed["threads"] == torch.get_num_threads()
    assert speed["runs"] == {"batch_1": 3, "batch_32": 2}
    assert set(speed["student"]) == RUNTIMES
    assert set(speed["teacher"]) == {"pytorch_fp32", "pytorch_bf16"}
    for side in ("student", "teacher"):
        for entry in speed[side].values():
            for batch in ("batch_1_ms", "batch_32_ms"):
                assert 0 < entry[batch]["median"] <= entry[batch]["p90"]
            assert entry["batch_32_samples_per_s"] > 0
            assert math.isfinite(entry["max_abs_diff_vs_pytorch_fp32"])
    assert speed["student"]["pytorch_fp32"]["max_abs_diff_vs_pytorch_fp32"] == 0.0
    assert set(speed["speedup"]["same_runtime"]) == {"pytorch_fp32", "pytorch_bf16"}
    assert set(speed["speedup"]["vs_teacher_pytorch_fp32"]) == RUNTIMES
    card = "\n".join(speed_table(speed))
    assert "| student | ONNX int8 (dynamic) |" in card and "| teacher | PyTorch bf16 |" in card
    assert "128 real tokens" in card


def test_int8_onnx_stays_close_to_the_fp32_graph_on_a_fixed_input(pool, onnx_files) -> None:
    batch = speed_inputs(pool, batch_size=32, seq_len=128)
    feed = {name: batch[name].numpy() for name in ONNX_INPUTS}
    fp32 = onnx_session(onnx_files["onnx"]).run(None, feed)[0]
    int8 = onnx_session(onnx_files["onnx_int8"]).run(None, feed)[0]
    assert fp32.shape == int8.shape == (32, 2)
    assert np.max(np.abs(int8 - fp32)) <= INT8_RELATIVE_TOLERANCE * np.max(np.abs(fp32))
    assert not np.array_equal(int8, fp32)  # it is quantised, not a copy of the fp32 graph


def test_speed_inputs_are_the_pool_s_real_tokens_without_padding() -> None:
    pool = [Encoded([2, 10, 11, 3], [0, 0, 0, 0], 0), Encoded([2, 12, 3], [0, 0, 0], 1)]
    batch = speed_inputs(pool, batch_size=2, seq_len=5)
    assert batch["input_ids"].tolist() == [[2, 10, 11, 3, 2], [12, 3, 2, 10, 11]]
    assert batch["attention_mask"].tolist() == [[1] * 5] * 2
    assert batch["token_type_ids"].tolist() == [[0] * 5] * 2


def test_round_robin_warms_up_every_model_then_rotates_the_first() -> None:
    order: list[str] = []

    def call(name: str):  # noqa: ANN202
        return lambda: order.append(name) or name

    calls = {("s", "a"): call("a"), ("s", "b"): call("b"), ("t", "c"): call("c")}
    times, first = round_robin(calls, runs=3, warmup=2)
    assert first == {("s", "a"): "a", ("s", "b"): "b", ("t", "c"): "c"}
    warmup, timed = order[:6], order[6:]
    assert warmup == ["a", "b", "c"] * 2
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(ts) == 3 and min(ts) >= 0 for ts in times.values())


def test_a_speed_up_is_teacher_time_over_student_time() -> None:
    def entry(b1_ms: float, b32_per_s: float) -> dict:
        return {"batch_1_ms": {"median": b1_ms}, "batch_32_samples_per_s": b32_per_s}

    student = {"pytorch_fp32": entry(2.0, 300.0), "onnx_int8": entry(1.0, 600.0)}
    teacher = {"pytorch_fp32": entry(8.0, 100.0), "pytorch_bf16": entry(4.0, 200.0)}
    up = speedups(student, teacher)
    assert up["same_runtime"] == {"pytorch_fp32": {"batch_1": 4.0, "batch_32": 3.0}}
    assert up["vs_teacher_pytorch_fp32"]["onnx_int8"] == {"batch_1": 8.0, "batch_32": 6.0}
