"""HF folder (safetensors + tokenizer + model card), ONNX checked against PyTorch, int8 ONNX."""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import Batch
from .errors import DistillError
from .evaluate import measure_latency_ms, size_on_disk

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_TOLERANCE = 1e-3  # float32 graph vs eager; rounding differs, meaning may not


def export_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    directory: Path,
    *,
    card: str,
) -> Path:
    """save_pretrained (safetensors), tokenizer and README.md into a folder swapped in whole."""
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(card, encoding="utf-8")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def model_card(
    *,
    title: str,
    task: str,
    teacher: str,
    config_json: dict[str, Any],
    metrics: dict[str, Any],
) -> str:
    """A README with HF front matter, the full config and the measured metrics."""
    pipeline = "feature-extraction" if task == "general" else "text-classification"
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {pipeline}",
        "tags:",
        "- distillation",
        "- tinybert",
        "---",
        "",
        f"# {title}",
        "",
        f"Distilled from `{teacher}` with TinyBERT-style knowledge distillation "
        "(embedding, attention and hidden-state losses, then the prediction layer).",
        "",
        "## Metrics",
        "",
        "All numbers were measured on this export; none are estimates.",
        "",
        "```json",
        json.dumps(metrics, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(config_json, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def export_onnx(
    model: PreTrainedModel,
    directory: Path,
    *,
    sample: Batch,
    check: Batch,
    opset: int,
    int8: bool,
    latency_inputs: dict[str, Batch],
    runs: int,
) -> tuple[list[Path], dict[str, Any]]:
    """model.onnx (+ model.int8.onnx), each with its size and latency; raises if ONNX disagrees.

    `sample` traces the graph; `check` (another batch size and length) proves the dynamic axes
    hold and the outputs match eager PyTorch within ONNX_TOLERANCE.
    """
    import onnxruntime as ort

    directory.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    previous_attn = model.config._attn_implementation
    # Eager attention traces to plain MatMul/Softmax that every runtime and the quantiser know.
    model.set_attn_implementation("eager")
    output_name = "logits" if hasattr(model, "classifier") else "last_hidden_state"
    path = directory / "model.onnx"
    args = tuple(sample[name] for name in ONNX_INPUTS)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS}
    dynamic[output_name] = {0: "batch"} if output_name == "logits" else {0: "batch", 1: "sequence"}

    class _Wrapper(torch.nn.Module):
        def __init__(self, inner: PreTrainedModel) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.logits if output_name == "logits" else out.last_hidden_state

    try:
        with torch.no_grad():
            torch.onnx.export(
                _Wrapper(model).eval(),
                args,
                str(path),
                input_names=list(ONNX_INPUTS),
                output_names=[output_name],
                dynamic_axes=dynamic,
                opset_version=opset,
                dynamo=False,  # the TorchScript exporter needs no onnxscript and handles HF masks
            )
    finally:
        model.set_attn_implementation(previous_attn)

    def session(p: Path) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, (os.cpu_count() or 1))
        return ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])

    def feed(batch: Batch) -> dict[str, np.ndarray]:
        return {name: batch[name].cpu().numpy() for name in ONNX_INPUTS}

    model.eval()  # the exporter restores the wrapper's (train) mode onto the model
    with torch.no_grad():
        expected = _Wrapper(model).eval()(*(check[name] for name in ONNX_INPUTS)).numpy()
    sess = session(path)
    got = sess.run(None, feed(check))[0]
    max_diff = float(np.max(np.abs(got - expected)))
    if not np.isfinite(max_diff) or max_diff > ONNX_TOLERANCE:
        raise DistillError(
            "onnx_mismatch",
            f"ONNX output differs from PyTorch by {max_diff:.2e} (> {ONNX_TOLERANCE})",
        )
    files = [path]
    report: dict[str, Any] = {
        "fp32": {
            "file": path.name,
            "size_bytes": size_on_disk(path),
            "max_abs_diff_vs_torch": max_diff,
            "latency_ms": _ort_latency(sess, latency_inputs, feed, runs=runs),
        }
    }
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q_path = directory / "model.int8.onnx"
        quantize_dynamic(str(path), str(q_path), weight_type=QuantType.QInt8)
        q_sess = session(q_path)
        q_got = q_sess.run(None, feed(check))[0]
        entry: dict[str, Any] = {
            "file": q_path.name,
            "size_bytes": size_on_disk(q_path),
            "max_abs_diff_vs_torch": float(np.max(np.abs(q_got - expected))),
            "latency_ms": _ort_latency(q_sess, latency_inputs, feed, runs=runs),
        }
        if output_name == "logits" and expected.shape[-1] > 1:
            entry["argmax_agreement_vs_torch"] = float(
                np.mean(q_got.argmax(-1) == expected.argmax(-1))
            )
        report["int8"] = entry
        files.append(q_path)
    return files, report


def _ort_latency(sess: Any, inputs: dict[str, Batch], feed: Any, *, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, batch in inputs.items():
        fed = feed(batch)
        out[name] = measure_latency_ms(partial(sess.run, None, fed), runs=runs)
    return out
