"""HF folder (safetensors + tokenizer + model card), ONNX checked against PyTorch, int8 ONNX."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .data import Batch, Batches
from .errors import DistillError
from .evaluate import size_on_disk

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


def reload_hf(directory: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The exported folder as a user loads it: its model with the task head, and its tokenizer."""
    model: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(
        directory, trust_remote_code=False, use_safetensors=True
    )
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    return model.train(False), tokenizer


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
        "The student's numbers were measured on the files of this export: this folder "
        "reloaded, and each ONNX file, on the validation rows as this folder's tokenizer "
        "encodes them. The teacher's on the same rows; none are estimates.",
        "",
        *speed_table(metrics.get("speed")),
        *guard_section(metrics.get("collapse_guard")),
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


def guard_section(guard: dict[str, Any] | None) -> list[str]:
    """What the collapse guard saw and did; [] when it saw nothing."""
    if not guard or not guard["history"]:
        return []
    lines = ["### Collapse guard", ""]
    for entry in guard["history"]:
        after = f"rung {entry['after_rung']}" if entry["after_rung"] else "the task stages"
        seen = f"predicted {entry['label']!r} for {entry['share']:.0%} of the validation rows"
        lines.append(f"- After {after} the student {seen}: {GUARD_OUTCOMES[entry['outcome']]}.")
    lines += ["", f"The rungs added {guard['steps']} optimizer steps.", ""]
    return lines


GUARD_OUTCOMES = {
    "retry": "collapsed, so the task stages ran again, the first of them longer",
    "stopped": "collapsed, and no rung or budget was left: this student is that collapsed one",
    "recovered": "no longer collapsed",
}


RUNTIME_NAMES = {
    "pytorch_fp32": "PyTorch fp32",
    "pytorch_bf16": "PyTorch bf16",
    "onnx": "ONNX (onnxruntime)",
    "onnx_int8": "ONNX int8 (dynamic)",
}


def speed_table(speed: dict[str, Any] | None) -> list[str]:
    """The card's speed section: one Markdown row per model and runtime; [] without figures."""
    if not speed:
        return []
    up = speed["speedup"]["vs_teacher_pytorch_fp32"]
    rows = [
        "### Speed",
        "",
        "| model | runtime | batch 1 median ms | batch 1 p90 ms | batch 32 samples/s "
        "| speed-up vs teacher fp32 (batch 1 / 32) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for side in ("student", "teacher"):
        for runtime, e in speed[side].items():
            ratio = up.get(runtime) if side == "student" else None
            cell = f"{ratio['batch_1']:.2f}x / {ratio['batch_32']:.2f}x" if ratio else ""
            rows.append(
                f"| {side} | {RUNTIME_NAMES.get(runtime, runtime)} "
                f"| {e['batch_1_ms']['median']:.2f} | {e['batch_1_ms']['p90']:.2f} "
                f"| {e['batch_32_samples_per_s']:.1f} | {cell} |"
            )
    runs = speed["runs"]
    native = "native" if speed["bf16"]["native"] else "emulated, no bf16 instructions"
    rows += [
        "",
        f"CPU, {speed['threads']} thread(s) for PyTorch and onnxruntime alike; every row "
        f"{speed['seq_len']} real tokens, no padding; median and p90 of {runs['batch_1']} "
        f"(batch 1) and {runs['batch_32']} (batch 32) timed runs after warm-up, all models "
        f"timed round-robin; bf16 is a bf16 copy of the weights ({native}). The same machine "
        "under other load gives other absolute times; the speed-ups hold better.",
        "",
    ]
    return rows


def export_onnx(
    model: PreTrainedModel,
    directory: Path,
    *,
    sample: Batch,
    check: Batch,
    opset: int,
    int8: bool,
) -> tuple[list[Path], dict[str, Any]]:
    """model.onnx (+ model.int8.onnx), each with its size and drift; raises if ONNX disagrees.

    `sample` traces the graph; `check` (another batch size and length) proves the dynamic axes
    hold and the outputs match eager PyTorch within ONNX_TOLERANCE. Their speed is speed.py's.
    """
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = _Outputs(model.cpu()).train(False)
    path = directory / "model.onnx"
    _trace(wrapper, path, sample=sample, opset=opset)
    wrapper.train(False)  # the exporter restores the wrapper's (train) mode onto the model
    with torch.no_grad():
        expected = wrapper(*(check[name] for name in ONNX_INPUTS)).numpy()
    got = onnx_session(path).run(None, _feed(check))[0]
    max_diff = float(np.max(np.abs(got - expected)))
    if not np.isfinite(max_diff) or max_diff > ONNX_TOLERANCE:
        raise DistillError(
            "onnx_mismatch",
            f"ONNX output differs from PyTorch by {max_diff:.2e} (> {ONNX_TOLERANCE})",
        )
    report: dict[str, Any] = {
        "fp32": {
            "file": path.name,
            "size_bytes": size_on_disk(path),
            "max_abs_diff_vs_torch": max_diff,
        }
    }
    if not int8:
        return [path], report
    q_path = directory / "model.int8.onnx"
    report["int8"] = _quantise(path, q_path, check, expected)
    return [path, q_path], report


class _Outputs(torch.nn.Module):
    """The model with positional inputs and one output tensor, as the exporter wants it."""

    def __init__(self, inner: PreTrainedModel) -> None:
        super().__init__()
        self.inner = inner
        self.output_name = "logits" if hasattr(inner, "classifier") else "last_hidden_state"

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        out = self.inner(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        result: torch.Tensor = getattr(out, self.output_name)
        return result


def _trace(wrapper: _Outputs, path: Path, *, sample: Batch, opset: int) -> None:
    model, output = wrapper.inner, wrapper.output_name
    dynamic = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS}
    dynamic[output] = {0: "batch"} if output == "logits" else {0: "batch", 1: "sequence"}
    previous_attn = model.config._attn_implementation
    # Eager attention traces to plain MatMul/Softmax that every runtime and the quantiser know.
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                tuple(sample[name] for name in ONNX_INPUTS),
                str(path),
                input_names=list(ONNX_INPUTS),
                output_names=[output],
                dynamic_axes=dynamic,
                opset_version=opset,
                dynamo=False,  # the TorchScript exporter needs no onnxscript and handles HF masks
            )
    finally:
        model.set_attn_implementation(previous_attn)


def _quantise(path: Path, q_path: Path, check: Batch, expected: np.ndarray) -> dict[str, Any]:
    """Dynamic int8 weights; how far its outputs drift from eager PyTorch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(path), str(q_path), weight_type=QuantType.QInt8)
    got = onnx_session(q_path).run(None, _feed(check))[0]
    entry: dict[str, Any] = {
        "file": q_path.name,
        "size_bytes": size_on_disk(q_path),
        "max_abs_diff_vs_torch": float(np.max(np.abs(got - expected))),
    }
    if expected.ndim == 2 and expected.shape[-1] > 1:  # class logits
        entry["argmax_agreement_vs_torch"] = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
    return entry


def onnx_session(path: Path, *, threads: int | None = None) -> Any:
    """A CPU session on `threads` intra-op threads (torch's count by default) that do not spin.

    Spinning threads keep the cores busy after a run, which would slow whatever is timed next:
    in speed.py's round-robin, another runtime.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict_onnx(path: Path, batches: Batches) -> tuple[np.ndarray, np.ndarray]:
    """(outputs (n, C), gold labels (n,)) of an exported ONNX file over a dataset, in order."""
    session = onnx_session(path)
    outputs, gold = [], []
    for batch in batches.in_order():
        outputs.append(session.run(None, _feed(batch))[0])
        gold.append(batch["labels"].numpy())
    return np.concatenate(outputs), np.concatenate(gold)


def _feed(batch: Batch) -> dict[str, np.ndarray]:
    return {name: batch[name].cpu().numpy() for name in ONNX_INPUTS}
