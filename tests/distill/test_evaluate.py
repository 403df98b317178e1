import math
from pathlib import Path

import pytest

from workers.distill.evaluate import classification_metrics, regression_metrics, size_on_disk


def test_classification_metrics_on_a_known_confusion() -> None:
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1])
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert 0 < m["mcc"] < 1


def test_a_constant_prediction_has_undefined_correlations_not_zero() -> None:
    m = regression_metrics([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert math.isnan(m["pearson"]) and math.isnan(m["spearman"])
    assert m["mse"] == pytest.approx(2 / 3)


def test_size_on_disk_counts_weight_files_only(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"x" * 5)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 100)
    assert size_on_disk(tmp_path) == 15
    assert size_on_disk(tmp_path / "model.safetensors") == 10
