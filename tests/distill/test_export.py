import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.factories import Recorder, tiny_config
from workers.distill.trainer import run


@pytest.mark.slow
def test_export_loads_with_auto_classes_and_onnx_matches(
    teacher_dir, train_examples, dev_examples, tmp_path
) -> None:
    result = run(
        tiny_config(export={"onnx": True, "int8": True}),
        teacher=str(teacher_dir),
        train=train_examples,
        validation=dev_examples,
        workdir=tmp_path,
        callbacks=Recorder(),
    )
    model = AutoModelForSequenceClassification.from_pretrained(result.export_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.export_dir)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert (result.export_dir / "model.safetensors").exists()

    texts = [e.text for e in dev_examples[:5]]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits.numpy()
    onnx_path, int8_path = result.onnx_files
    assert (onnx_path.name, int8_path.name) == ("model.onnx", "model.int8.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in enc.items()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)

    onnx = result.metrics["onnx"]
    assert onnx["fp32"]["size_bytes"] == onnx_path.stat().st_size
    assert onnx["int8"]["size_bytes"] == int8_path.stat().st_size
    assert onnx["fp32"]["latency_ms"]["batch_32"]["median"] > 0
    speed = result.metrics["speed"]
    assert set(speed["student"]) == {"pytorch_fp32", "pytorch_bf16", "onnx", "onnx_int8"}
    assert onnx["int8"]["latency_ms"]["batch_1"] == speed["student"]["onnx_int8"]["batch_1_ms"]
    assert speed["speedup"]["vs_teacher_pytorch_fp32"]["onnx_int8"]["batch_32"] > 0
    card = (result.export_dir / "README.md").read_text()
    assert "library_name: transformers" in card and '"accuracy"' in card and '"layer_map"' in card
    assert (
        "| student | ONNX (onnxruntime) |" in card and "| student | ONNX int8 (dynamic) |" in card
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["student"] == result.metrics["student"]
