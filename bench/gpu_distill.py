"""The engine's distillation step against a plain TinyBERT loop on one GPU: samples/s and MFU
against a matmul ceiling measured here. bench/gpu.sh runs it on CUDA; `--device cpu --smoke`
runs the same code with tiny sizes on any machine.

A BERT-base-sized teacher (12 layers, 768 wide, random weights: throughput does not depend on
their values) and a TinyBERT4 student (4 layers, 312 wide). The engine's side is the engine's
own code: the step of workers.distill.steps (its loss terms, hooks and bf16 autocast) and the
optimizer and update of workers.distill.trainer. The plain side is bench/gpu_plain.py. Both see
the same batches of synthetic rows; both stages are measured, intermediate (attention and
hidden states) and prediction (logits). The two loops alternate in rounds, so drift in clocks
or temperature hits both.

MFU: the model FLOPs of a step (teacher forward + 3 x student forward incl. the hidden-state
projection; matmuls only, padding excluded, from the shapes) per second, over the best of a
large bf16 GEMM timed here. The FLOPs torch's FlopCounterMode counts in one real engine step
are written beside them as a check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the repository root, for a machine where the project is not installed (bench/gpu.sh's GPU box)
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from _common import RESULTS_DIR, environment, log, offline_env, table, write_json  # noqa: E402

offline_env()

import torch  # noqa: E402
from gpu_plain import PlainLoop  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer  # noqa: E402

from contract.config import DistillConfig, StageConfig  # noqa: E402
from contract.vocab import Stage  # noqa: E402
from workers.distill.data import Batch, Batches, Encoded, collate  # noqa: E402
from workers.distill.features import autocast_for  # noqa: E402
from workers.distill.prepare import PlannedStage  # noqa: E402
from workers.distill.steps import distill_step  # noqa: E402
from workers.distill.student import Student, create_student  # noqa: E402
from workers.distill.teacher import Teacher  # noqa: E402
from workers.distill.trainer import make_optimizer, optimizer_step  # noqa: E402
from workers.distill.trim_vocab import StudentVocab  # noqa: E402

TARGET_MFU = 0.40
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
STAGES: tuple[Stage, ...] = ("intermediate_distill", "prediction_distill")


@dataclass(frozen=True)
class Sizes:
    teacher: tuple[int, int, int, int]  # layers, width, heads, feed-forward
    student: tuple[int, int, int, int]
    vocab: int
    seq_len: int
    batch_sizes: tuple[int, ...]
    gemm_n: int  # the ceiling's square matmul
    seconds: float  # timed seconds per loop, stage and batch size, split over the rounds
    warmup_steps: int


FULL = Sizes((12, 768, 12, 3072), (4, 312, 12, 1200), 30522, 128, (32, 256), 8192, 30.0, 10)
SMOKE = Sizes((2, 64, 4, 128), (2, 32, 4, 64), 1000, 32, (4, 8), 256, 1.5, 2)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    sizes = SMOKE if a.smoke else FULL
    if a.seconds is not None:
        sizes = Sizes(**{**sizes.__dict__, "seconds": a.seconds})
    if a.batch_sizes:
        sizes = Sizes(**{**sizes.__dict__, "batch_sizes": tuple(a.batch_sizes)})
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"torch {torch.__version__} sees no CUDA device")
    torch.manual_seed(0)
    started = time.time()
    log(f"ceiling: {sizes.gemm_n}^3 GEMMs on {device}")
    ceiling = {
        "bf16": matmul_ceiling(device, torch.bfloat16, sizes.gemm_n),
        "fp32": matmul_ceiling(device, torch.float32, sizes.gemm_n),
    }
    teacher_model = build_bert(sizes.teacher, vocab=sizes.vocab, seq_len=sizes.seq_len)
    results = []
    for batch_size in sizes.batch_sizes:
        batches = synthetic_batches(sizes, batch_size, count=8)
        for stage in STAGES:
            results += measure_pair(stage, teacher_model, sizes, batch_size, batches, device, a)
    for r in results:
        r["mfu"] = r["model_flops_per_s"] / ceiling["bf16"]
        r["mfu_vs_fp32_ceiling"] = r["model_flops_per_s"] / ceiling["fp32"]
    report = summary(a, sizes, device, ceiling, results, wall_s=time.time() - started)
    print_table(report)
    out = Path(a.out) if a.out else default_out(a)
    write_json(out, report)
    log(f"wrote {out}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny models and a few seconds")
    p.add_argument("--seconds", type=float, help="timed seconds per loop, stage and batch size")
    p.add_argument("--batch-sizes", type=int, nargs="*", help="default 32 256 (smoke: 4 8)")
    p.add_argument("--rounds", type=int, default=3, help="engine/plain alternations per pair")
    p.add_argument("--out", help="JSON path; default $OUT/gpu.json, else bench/results/")
    return p.parse_args(argv)


def default_out(a: argparse.Namespace) -> Path:
    name = f"gpu-{a.device}{'-smoke' if a.smoke else ''}.json"
    return Path(os.environ["OUT"]) / name if os.environ.get("OUT") else RESULTS_DIR / name


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """FLOP/s of the best of three timed batches of n x n x n matmuls (a practical peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    iters = max(3, int(2e13 / (2 * n**3))) if device.type == "cuda" else 10
    best = 0.0
    for _ in range(4):  # the first is the warm-up: cuBLAS picks its kernel
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b)
        sync(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - start))
    return best


def build_bert(shape: tuple[int, int, int, int], *, vocab: int, seq_len: int) -> Any:
    layers, width, heads, ffn = shape
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max(512, seq_len),
    )
    config.num_labels = 2
    return BertForSequenceClassification(config).train(False)


def synthetic_batches(sizes: Sizes, batch_size: int, *, count: int) -> list[Batch]:
    """`count` batches of full-length rows (every token real: no padding to exclude)."""
    g = torch.Generator().manual_seed(batch_size)
    rows = [
        Encoded(
            torch.randint(5, sizes.vocab, (sizes.seq_len,), generator=g).tolist(),
            [0] * sizes.seq_len,
            int(torch.randint(0, 2, (1,), generator=g)),
        )
        for _ in range(batch_size * count)
    ]
    return [collate(rows[i : i + batch_size], pad_id=0) for i in range(0, len(rows), batch_size)]


def measure_pair(
    stage: Stage,
    teacher_model: Any,
    sizes: Sizes,
    batch_size: int,
    batches: list[Batch],
    device: torch.device,
    a: argparse.Namespace,
) -> list[dict[str, Any]]:
    """The engine and the plain loop on one stage and batch size, alternating in rounds."""
    # The plain loop first: its copy of the teacher must not inherit the engine's capture hooks.
    student = build_bert(sizes.student, vocab=sizes.vocab, seq_len=sizes.seq_len)
    plain_loop = PlainLoop(teacher_model, student, device=device, seq_len=sizes.seq_len)
    plain = plain_loop.intermediate if stage == "intermediate_distill" else plain_loop.prediction
    engine, close, student_config = engine_step(stage, teacher_model, sizes, batch_size, device)
    loops: dict[str, Callable[[Batch], object]] = {"engine": engine, "plain": plain}
    counted = count_flops(engine, batches[0])
    try:
        rounds, peak = time_loops(loops, batches, sizes, device, a.rounds, f"{stage} b{batch_size}")
    finally:
        close()
    flops = model_flops_per_sample(stage, teacher_model.config, student_config, sizes.seq_len)
    out = []
    for name in loops:
        steps = sum(s for s, _ in rounds[name])
        seconds = sum(t for _, t in rounds[name])
        per_s = steps * batch_size / seconds
        out.append(
            {
                "loop": name,
                "stage": stage,
                "batch_size": batch_size,
                "precision": engine_precision(device) if name == "engine" else "fp32",
                "attention": "the engine's (SDPA by default)" if name == "engine" else "eager",
                "samples_per_s": per_s,
                "rounds_samples_per_s": [s * batch_size / t for s, t in rounds[name]],
                "steps": steps,
                "seconds": seconds,
                "model_flops_per_sample": flops,
                "model_flops_per_s": flops * per_s,
                "counted_flops_per_step": counted if name == "engine" else None,
                "peak_memory_bytes": peak[name],
            }
        )
    return out


def time_loops(
    loops: dict[str, Callable[[Batch], object]],
    batches: list[Batch],
    sizes: Sizes,
    device: torch.device,
    rounds: int,
    label: str,
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, int | None]]:
    """({loop: [(steps, seconds) per round]}, {loop: peak CUDA bytes in its warm-up, with
    both loops' models resident}); warm-up steps first, then the loops in turn."""
    peak: dict[str, int | None] = {}
    for name, fn in loops.items():
        log(f"{label} {name}: warm-up")
        reset_peak(device)
        run_steps(fn, batches, steps=sizes.warmup_steps, device=device)
        peak[name] = peak_memory(device)
    timed: dict[str, list[tuple[int, float]]] = {name: [] for name in loops}
    for r in range(rounds):
        for name, fn in loops.items():
            steps, elapsed = run_for(fn, batches, seconds=sizes.seconds / rounds, device=device)
            timed[name].append((steps, elapsed))
            per_s = steps * len(batches[0]["input_ids"]) / elapsed
            log(f"{label} {name} round {r + 1}: {per_s:.1f} samples/s")
    return timed, peak


def engine_step(
    stage: Stage, teacher_model: Any, sizes: Sizes, batch_size: int, device: torch.device
) -> tuple[Callable[[Batch], object], Callable[[], None], Any]:
    """(one engine optimizer step, remove its hooks, the student's config).

    What trainer.distill and trainer.train_stage do per step, without checkpoints and events.
    """
    layers, width, heads, ffn = sizes.student
    config = DistillConfig.model_validate(
        {
            "student": {
                "preset": None,
                "num_layers": layers,
                "hidden_size": width,
                "num_attention_heads": heads,
                "intermediate_size": ffn,
                "init": "random",
            },
            "hyperparameters": {"batch_size": batch_size, "max_seq_length": sizes.seq_len},
            "device": device.type,
            "bf16": True,
        }
    )
    # the engine's Teacher and StudentVocab carry a tokenizer; the step never calls it
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(SPECIALS)})
    teacher = Teacher(teacher_model.to(device), tokenizer, "classification", ["0", "1"], True)
    student: Student = create_student(
        config, teacher=teacher, vocab=StudentVocab(tokenizer), device=device
    )
    step = distill_step(stage, config, teacher=teacher, student=student, device=device)
    params = list(student.model.named_parameters())
    if stage != "prediction_distill":
        params += [(f"projections.{n}", p) for n, p in student.projections.named_parameters()]
    settings = StageConfig(epochs=1, learning_rate=1e-4, warmup_ratio=0.0, schedule="constant")
    one_row = Batches([Encoded([2, 3], [0, 0], 0)], batch_size=1, seed=0, pad_id=0)
    planned = PlannedStage(stage, settings, one_row)  # the schedule is constant: steps unused
    optimizer, scheduler = make_optimizer(planned, params, config.hyperparameters.weight_decay)
    trainable = [p for _, p in params]

    def one(batch: Batch) -> object:
        return optimizer_step(step(batch), optimizer, scheduler, trainable)

    return one, step.close, student.model.config


def run_steps(
    fn: Callable[[Batch], object], batches: list[Batch], *, steps: int, device: torch.device
) -> None:
    for i in range(steps):
        fn(batches[i % len(batches)])
    sync(device)


def run_for(
    fn: Callable[[Batch], object], batches: list[Batch], *, seconds: float, device: torch.device
) -> tuple[int, float]:
    """(steps, wall seconds) of steps until `seconds` passed, the device drained at both ends.

    The clock is read between steps on the host, which may run ahead of the GPU; the wall time
    ends after the final synchronize, so every counted step is paid for.
    """
    sync(device)
    start = time.perf_counter()
    steps = 0
    while time.perf_counter() - start < seconds:
        fn(batches[steps % len(batches)])
        steps += 1
    sync(device)
    return steps, time.perf_counter() - start


def count_flops(fn: Callable[[Batch], object], batch: Batch) -> int | None:
    """The matmul FLOPs torch counts in one step; None when the counter cannot see in (a
    compiled graph, say)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            fn(batch)
        return int(counter.get_total_flops()) or None
    except Exception as exc:  # a counting aid only: the benchmark goes on without it
        log(f"FlopCounterMode failed: {exc!r}")
        return None


def forward_flops(cfg: Any, seq_len: int) -> float:
    """Matmul FLOPs of one BERT forward pass over one row of `seq_len` real tokens."""
    d, ffn, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    dense = 2 * (4 * d * d + 2 * d * ffn)  # q, k, v, output and the feed-forward, per token
    attention = 2 * 2 * seq_len * d  # QK^T and the weighted sum of V, per token
    return float(seq_len * layers * (dense + attention) + 2 * d * d)  # + the pooler


def model_flops_per_sample(stage: str, t_cfg: Any, s_cfg: Any, seq_len: int) -> float:
    """Teacher forward + student forward and backward (3x), with W_h on every student state in
    the intermediate stage; the losses' own products are left out (the counter has them)."""
    student = forward_flops(s_cfg, seq_len)
    if stage != "prediction_distill":
        student += (
            2 * seq_len * s_cfg.hidden_size * t_cfg.hidden_size * (s_cfg.num_hidden_layers + 1)
        )
    return forward_flops(t_cfg, seq_len) + 3 * student


def engine_precision(device: torch.device) -> str:
    """What the engine's own autocast rule gives a bf16 config on this device."""
    on = isinstance(autocast_for(device, bf16=True), torch.autocast)
    return "bf16 autocast" if on else "fp32 (no engine bf16 here)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"type": "cpu", "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    return {
        "type": "cuda",
        "name": props.name,
        "memory_bytes": int(props.total_memory),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }


def summary(
    a: argparse.Namespace,
    sizes: Sizes,
    device: torch.device,
    ceiling: dict[str, float],
    results: list[dict[str, Any]],
    *,
    wall_s: float,
) -> dict[str, Any]:
    by = {(r["stage"], r["batch_size"], r["loop"]): r for r in results}
    speedup = {
        f"{stage}/batch_{b}": by[stage, b, "engine"]["samples_per_s"]
        / by[stage, b, "plain"]["samples_per_s"]
        for stage, b, loop in by
        if loop == "engine"
    }
    best = max(r["mfu"] for r in results if r["loop"] == "engine")
    return {
        "bench": "gpu_distill",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "smoke": a.smoke,
        "device": device_info(device),
        "environment": environment(),
        "sizes": sizes.__dict__,
        "rounds": a.rounds,
        "ceiling_flops_per_s": ceiling,
        "results": results,
        "speedup_engine_over_plain": speedup,
        "target_mfu": TARGET_MFU,
        "best_engine_mfu": best,
        "target_met": best >= TARGET_MFU,
        "wall_s": wall_s,
    }


def print_table(report: dict[str, Any]) -> None:
    c = report["ceiling_flops_per_s"]
    rows = [
        [
            r["stage"].removesuffix("_distill"),
            r["batch_size"],
            r["loop"],
            r["precision"],
            r["samples_per_s"],
            r["model_flops_per_s"] / 1e12,
            r["mfu"],
            report["speedup_engine_over_plain"].get(f"{r['stage']}/batch_{r['batch_size']}")
            if r["loop"] == "engine"
            else None,
        ]
        for r in report["results"]
    ]
    table(
        f"{'SMOKE ' if report['smoke'] else ''}distillation on {report['device']['type']}: "
        f"ceiling bf16 {c['bf16'] / 1e12:.3g} TFLOP/s, fp32 {c['fp32'] / 1e12:.3g} TFLOP/s; "
        f"target MFU {report['target_mfu']:.0%}, best {report['best_engine_mfu']:.1%}",
        ["stage", "batch", "loop", "precision", "samples/s", "TFLOP/s", "MFU", "x plain"],
        rows,
    )


if __name__ == "__main__":
    raise SystemExit(main())
