"""The student's speed beside the teacher's, on CPU: latency at batch 1 and throughput at batch 32
in every runtime the export offers (PyTorch fp32 and bf16, ONNX, int8 ONNX).

Kept honest on a shared machine: every model gets the same inputs (real tokens of the data, a
stated length, no padding); every model is called a few times before timing; then all of them
are timed in turn, round-robin with the first one rotating, so background load hits them alike
and their ratios hold even when the absolute figures drift; median and p90 of N runs; PyTorch
and onnxruntime on one recorded thread count. The teacher is timed in PyTorch fp32 and bf16
only: exporting it to ONNX would cost every job seconds and up to ~440 MB (BERT-base) for a
runtime nobody deploys a teacher in.

    metrics["speed"] = {
      "device": "cpu", "threads": 2, "seq_len": 128, "inputs": "...",
      "runs": {"batch_1": 20, "batch_32": 5}, "warmup": {"batch_1": 2, "batch_32": 1},
      "bf16": {"how": "...", "native": true},
      "student": {runtime: {"batch_1_ms": {"median", "p90"}, "batch_32_ms": {"median", "p90"},
                            "batch_32_samples_per_s": float,
                            "max_abs_diff_vs_pytorch_fp32": float}},   # same side, same input
      "teacher": {"pytorch_fp32": ..., "pytorch_bf16": ...},
      "speedup": {"same_runtime": {runtime: {"batch_1": x, "batch_32": x}},
                  "vs_teacher_pytorch_fp32": {runtime: {"batch_1": x, "batch_32": x}}},
    }

Runtimes: pytorch_fp32, pytorch_bf16, onnx, onnx_int8 (the last two when they were exported).
A speed-up is teacher time / student time: above 1 the student is faster.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from itertools import chain, cycle, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel

from .data import Batch, Encoded
from .export import ONNX_INPUTS, onnx_session

BATCH_SIZES = (1, 32)
# the first calls build oneDNN primitives, allocate onnxruntime's arena and pack bf16 weights
WARMUP = {1: 2, 32: 1}
INPUTS = "real tokens of the validation set, no padding"
BF16 = "a bf16 copy of the weights (not autocast: it would recast every weight on every call)"

Call = Callable[[], Any]  # one forward pass over a prepared input; returns what the model returns
Key = tuple[str, str]  # (side, runtime): ("student", "onnx_int8")


def measure_speed(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    *,
    pool: Sequence[Encoded],
    input_map: Tensor | None,
    onnx: dict[str, Path],
    seq_len: int,
    latency_runs: int,
    throughput_runs: int,
) -> dict[str, Any]:
    """metrics["speed"] (see the module docstring); `onnx` maps runtime name -> exported file."""
    seq_len = min(
        seq_len,
        int(student.config.max_position_embeddings),
        int(teacher.config.max_position_embeddings),
    )
    inputs = {n: speed_inputs(pool, batch_size=n, seq_len=seq_len) for n in BATCH_SIZES}
    threads = torch.get_num_threads()
    calls = {
        ("student", "pytorch_fp32"): torch_calls(student, inputs, bf16=False, input_map=input_map),
        ("student", "pytorch_bf16"): torch_calls(student, inputs, bf16=True, input_map=input_map),
        ("teacher", "pytorch_fp32"): torch_calls(teacher, inputs, bf16=False),
        ("teacher", "pytorch_bf16"): torch_calls(teacher, inputs, bf16=True),
    }
    mapped = {n: mapped_ids(b, input_map) for n, b in inputs.items()}  # the graph's own ids
    for runtime, path in onnx.items():
        calls["student", runtime] = onnx_calls(path, mapped, threads=threads)
    runs = {1: latency_runs, 32: throughput_runs}
    timed = {
        n: round_robin({k: c[n] for k, c in calls.items()}, runs=runs[n], warmup=WARMUP[n])
        for n in BATCH_SIZES
    }
    result: dict[str, Any] = {
        "device": "cpu",
        "threads": threads,
        "seq_len": seq_len,
        "inputs": INPUTS,
        "runs": {f"batch_{n}": runs[n] for n in BATCH_SIZES},
        "warmup": {f"batch_{n}": WARMUP[n] for n in BATCH_SIZES},
        "bf16": {"how": BF16, "native": bf16_native()},
        "student": {},
        "teacher": {},
    }
    for side, runtime in calls:
        times = {n: timed[n][0][side, runtime] for n in BATCH_SIZES}
        outputs = timed[32][1]
        reference = as_numpy(outputs[side, "pytorch_fp32"])
        result[side][runtime] = runtime_entry(times, as_numpy(outputs[side, runtime]), reference)
    result["speedup"] = speedups(result["student"], result["teacher"])
    return result


def speed_inputs(pool: Sequence[Encoded], *, batch_size: int, seq_len: int) -> Batch:
    """(batch_size, seq_len) of the pool's real token ids (teacher ids), every position attended."""
    need = batch_size * seq_len
    tokens = list(islice(chain.from_iterable(e.input_ids for e in cycle(pool)), need))
    ids = torch.tensor(tokens, dtype=torch.long).reshape(batch_size, seq_len)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }


def mapped_ids(batch: Batch, input_map: Tensor | None) -> Batch:
    """The batch in the student's token ids (a trimmed vocabulary renumbers them)."""
    if input_map is None:
        return batch
    return {**batch, "input_ids": input_map[batch["input_ids"]]}


def torch_calls(
    model: PreTrainedModel,
    inputs: dict[int, Batch],
    *,
    bf16: bool,
    input_map: Tensor | None = None,
) -> dict[int, Call]:
    """Batch size -> a forward pass in inference mode; bf16 times a bf16 copy of the model."""
    net = model
    if bf16:
        net = copy.deepcopy(model)
        net.to(torch.bfloat16)  # type: ignore[arg-type]  # HF's to() is @wraps(Module.to)
    net.train(False)

    def call_for(feed: Batch) -> Call:
        def call() -> Any:
            with torch.inference_mode():
                return net(**feed)[0]  # logits, or last_hidden_state without a head

        return call

    return {n: call_for(mapped_ids(b, input_map)) for n, b in inputs.items()}


def onnx_calls(path: Path, inputs: dict[int, Batch], *, threads: int) -> dict[int, Call]:
    """Batch size -> one onnxruntime run of the exported graph."""
    sess = onnx_session(path, threads=threads)

    def call_for(feed: dict[str, np.ndarray]) -> Call:
        return lambda: sess.run(None, feed)[0]

    return {n: call_for({k: b[k].numpy() for k in ONNX_INPUTS}) for n, b in inputs.items()}


def round_robin(
    calls: dict[Key, Call], *, runs: int, warmup: int
) -> tuple[dict[Key, list[float]], dict[Key, Any]]:
    """(each call's `runs` wall times in ms, its first output), after `warmup` calls of each.

    Each round calls every model once; the first of the round rotates, so no model always
    follows the same neighbour.
    """
    names = list(calls)
    first = {name: calls[name]() for name in names}
    for _ in range(warmup - 1):
        for name in names:
            calls[name]()
    times: dict[Key, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            start = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return times, first


def runtime_entry(
    times: dict[int, list[float]], output: np.ndarray, reference: np.ndarray
) -> dict[str, Any]:
    """One runtime's figures; its output on the batch-32 input against PyTorch fp32's."""
    b32 = stats(times[32])
    return {
        "batch_1_ms": stats(times[1]),
        "batch_32_ms": b32,
        "batch_32_samples_per_s": 32 * 1000.0 / b32["median"],
        "max_abs_diff_vs_pytorch_fp32": float(np.max(np.abs(output - reference))),
    }


def speedups(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    """Teacher time / student time, runtime for runtime and against the teacher's fp32."""

    def ratio(s: dict[str, Any], t: dict[str, Any]) -> dict[str, float]:
        return {
            "batch_1": t["batch_1_ms"]["median"] / s["batch_1_ms"]["median"],
            "batch_32": s["batch_32_samples_per_s"] / t["batch_32_samples_per_s"],
        }

    return {
        "same_runtime": {r: ratio(student[r], teacher[r]) for r in teacher if r in student},
        "vs_teacher_pytorch_fp32": {
            r: ratio(entry, teacher["pytorch_fp32"]) for r, entry in student.items()
        },
    }


def legacy_latency(speed: dict[str, Any], side: str, runtime: str) -> dict[str, Any]:
    """The older {"batch_1": {median, p90}, "batch_32": ...} shape, from the speed block."""
    entry = speed[side][runtime]
    return {f"batch_{n}": entry[f"batch_{n}_ms"] for n in BATCH_SIZES}


def stats(ms: list[float]) -> dict[str, float]:
    arr = np.asarray(ms)
    return {"median": float(np.median(arr)), "p90": float(np.percentile(arr, 90))}


def as_numpy(output: Any) -> np.ndarray:
    if isinstance(output, Tensor):
        return output.float().numpy()
    return np.asarray(output, dtype=np.float32)


def bf16_native() -> bool:
    """Whether oneDNN runs bf16 matmuls in hardware here (AVX512-BF16 or AMX), not emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
