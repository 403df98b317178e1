"""Throughput of the distillation engine against a plain TinyBERT loop, in one process.

Both distil all-MiniLM-L6-v2 (fine-tuned here first: it has no head) into tinybert-4l-312d on
rt-polarity, stage by stage, as the recipe runs them: teacher fine-tuning, intermediate-layer
distillation, prediction-layer distillation (default 1 + 3 + 2 epochs), batch 32, the same
resolved learning rates, schedules, losses and student initialisation (the engine's
`teacher_select`). They differ only in how the loop runs:

  plain    the way the TinyBERT scripts do it: every row padded to 128 tokens, the teacher's
           forward pass on every step of every epoch, eager attention, float32, the per-tensor
           AdamW loop, a loss read back to the host every step
  engine   workers.distill.trainer.run: length-bucketed batches, teacher targets computed once
           per stage (teacher_cache), SDPA attention, bf16 autocast where the CPU has bf16
           matrix units, fused AdamW, losses synced in bursts

They alternate: when the engine starts a stage, its callback first runs the same stage of the
plain loop, then lets the engine go on, so background load hits both alike.

Reported per stage: samples/s and wall time of each; useful FLOP/s, i.e. the matmul FLOPs the
stage needs on real tokens (forward + backward of the model trained = 3x forward; the teacher's
forward once per example per distillation stage; padding and recomputation excluded), the same
count for both loops, divided by each one's wall time and by a matmul ceiling measured here
(an n x n GEMM in float32 and bf16 at --gemm-size, the best of three, before and after). Both
final dev accuracies. JSON in bench/results/.

    python bench/throughput.py --train-rows 256 --dev-rows 128 --epochs 1,1,1 --label smoke
    python bench/throughput.py                     # the full run: 10,143 rows, 1 + 3 + 2 epochs
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402  (the path above makes the repository importable)
    DATASETS_DIR,
    RESULTS_DIR,
    environment,
    fmt_seconds,
    log,
    offline_env,
    read_split,
    stratified_limit,
    table,
    teacher_path,
    write_json,
)

offline_env()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

STAGES = ("teacher_finetune", "intermediate_distill", "prediction_distill")
STUDENT = "tinybert-4l-312d"


# --- the matmul ceiling ----------------------------------------------------------------------


def gemm_ceiling(size: int, dtype: torch.dtype, repeats: int = 3) -> float:
    """FLOP/s of the best of `repeats` (size x size) @ (size x size) products, after a warm-up."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def ceilings(size: int) -> dict[str, float]:
    return {
        "float32": gemm_ceiling(size, torch.float32),
        "bfloat16": gemm_ceiling(size, torch.bfloat16),
    }


# --- FLOPs, counted analytically -----------------------------------------------------------


def forward_flops(cfg: Any, n: int) -> float:
    """Matmul FLOPs of one n-token sequence through a BERT: projections, feed-forward, QK^T and
    AV, pooler and head (embedding lookups, norms and softmax are not matmuls)."""
    layers, d, ff = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    per_layer = 2 * n * (4 * d * d + 2 * d * ff) + 2 * 2 * n * n * d
    return float(layers * per_layer + 2 * d * d + 2 * d * max(1, cfg.num_labels))


def intermediate_loss_flops(s_cfg: Any, t_cfg: Any, n: int) -> tuple[float, float]:
    """(student side, teacher side) extra matmuls of the intermediate losses on n tokens:
    W_e and W_h (student width -> teacher width) on M + 1 states, and QK^T rebuilt per layer."""
    m = s_cfg.num_hidden_layers
    student = (
        2 * n * s_cfg.hidden_size * t_cfg.hidden_size * (m + 1) + 2 * n * n * s_cfg.hidden_size * m
    )
    return student, 2 * n * n * t_cfg.hidden_size * m


def stage_flops(stage: str, lengths: list[int], epochs: int, s_cfg: Any, t_cfg: Any) -> float:
    """Useful FLOPs of a stage over `lengths` (real tokens per example)."""
    total = 0.0
    for n in lengths:
        if stage == "teacher_finetune":
            total += epochs * 3 * forward_flops(t_cfg, n)
            continue
        per_epoch = 3 * forward_flops(s_cfg, n)
        if stage == "intermediate_distill":
            s_loss, t_loss = intermediate_loss_flops(s_cfg, t_cfg, n)
            per_epoch += 3 * s_loss + t_loss
        total += epochs * per_epoch + forward_flops(t_cfg, n)  # the teacher's targets, once
    return total


# --- the plain loop ----------------------------------------------------------------------------


@dataclass
class Plain:
    """TinyBERT's loop, written out: static padding, the teacher every step, float32, eager."""

    teacher_dir: Path
    train: list[Any]
    dev: list[Any]
    batch_size: int
    max_length: int
    seed: int
    tensors: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.labels = sorted({str(e.label) for e in self.train})
        tokenizer = AutoTokenizer.from_pretrained(self.teacher_dir)
        for name, rows in (("train", self.train), ("dev", self.dev)):
            enc = tokenizer(
                [e.text for e in rows],
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            enc["labels"] = torch.tensor([self.labels.index(str(e.label)) for e in rows])
            self.tensors[name] = dict(enc)
        torch.manual_seed(self.seed)
        self.teacher = AutoModelForSequenceClassification.from_pretrained(
            self.teacher_dir, num_labels=len(self.labels), attn_implementation="eager"
        )
        self.student: Any = None
        self.projections: Any = None

    def batches(self, stage: int, epoch: int) -> Iterator[dict[str, Tensor]]:
        data = self.tensors["train"]
        g = torch.Generator().manual_seed(self.seed * 1000 + stage * 100 + epoch)
        order = torch.randperm(len(data["labels"]), generator=g)
        for i in range(0, len(order), self.batch_size):
            rows = order[i : i + self.batch_size]
            yield {k: v[rows] for k, v in data.items()}

    def run_stage(self, stage: str, config: Any) -> None:
        settings = getattr(config.distillation, stage.removesuffix("_distill"))
        if stage == "teacher_finetune":
            self.teacher.train()
            self.loop(0, settings, self.teacher, self.finetune_loss)
            self.teacher.train(False)
            self.make_student(config)
        elif stage == "intermediate_distill":
            params = [*self.student.named_parameters(), *self.projections.named_parameters()]
            self.loop(1, settings, params, self.intermediate_loss)
        else:
            self.loop(2, settings, list(self.student.named_parameters()), self.prediction_loss)

    def loop(
        self, index: int, s: Any, model: Any, loss_fn: Callable[[dict[str, Tensor]], Tensor]
    ) -> None:
        from transformers import get_scheduler

        from workers.distill.trainer import param_groups

        named = list(model.named_parameters()) if isinstance(model, nn.Module) else model
        optimizer = torch.optim.AdamW(param_groups(named, 0.01), lr=s.learning_rate, foreach=False)
        steps = s.epochs * math.ceil(len(self.train) / self.batch_size)
        name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
        scheduler = get_scheduler(name[s.schedule], optimizer, int(s.warmup_ratio * steps), steps)
        params = [p for _, p in named]
        for epoch in range(s.epochs):
            for batch in self.batches(index, epoch):
                loss = loss_fn(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                loss.item()  # logged every step, as the scripts do

    def inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}

    def finetune_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(self.teacher(**self.inputs(batch)).logits, batch["labels"])

    def make_student(self, config: Any) -> None:
        """The engine's start: the fine-tuned teacher's layers g(m), sliced to the student."""
        from transformers import BertForSequenceClassification

        from workers.distill.layer_map import layer_map
        from workers.distill.selection import copy_teacher_layers
        from workers.distill.student import Projections

        dims = config.student.dims()
        cfg = self.teacher.config.__class__.from_dict(self.teacher.config.to_dict())
        cfg.num_hidden_layers, cfg.hidden_size = dims.num_layers, dims.hidden_size
        cfg.num_attention_heads, cfg.intermediate_size = (
            dims.num_attention_heads,
            dims.intermediate_size,
        )
        cfg._attn_implementation = "eager"
        torch.manual_seed(self.seed)
        self.student = BertForSequenceClassification(cfg)
        mapping = layer_map(
            "uniform",
            teacher_layers=self.teacher.config.num_hidden_layers,
            student_layers=dims.num_layers,
        )
        copy_teacher_layers(self.student, self.teacher, mapping, copy_head=True)
        self.projections = Projections(
            dims.hidden_size, self.teacher.config.hidden_size, identity=True
        )
        self.mapping = mapping
        self.temperature = config.hyperparameters.temperature

    def features(self, model: Any, batch: dict[str, Tensor]) -> tuple[Any, dict[int, Tensor]]:
        """The model's output (hidden states too) and each layer's pre-softmax QK^T / sqrt(d)."""
        from workers.distill.losses import attention_scores

        captured: dict[tuple[int, str], Tensor] = {}
        hooks = []
        for i, block in enumerate(model.bert.encoder.layer):
            for name in ("query", "key"):

                def hook(_m: Any, _i: Any, out: Tensor, key: tuple[int, str] = (i, name)) -> None:
                    captured[key] = out

                hooks.append(getattr(block.attention.self, name).register_forward_hook(hook))
        out = model(**self.inputs(batch), output_hidden_states=True)
        for h in hooks:
            h.remove()
        heads = model.config.num_attention_heads
        layers = len(model.bert.encoder.layer)
        return out, {
            i: attention_scores(captured[(i, "query")], captured[(i, "key")], heads)
            for i in range(layers)
        }

    def intermediate_loss(self, batch: dict[str, Tensor]) -> Tensor:
        from workers.distill.losses import attention_mse, hidden_mse

        mask = batch["attention_mask"]
        with torch.no_grad():
            t_out, t_scores = self.features(self.teacher, batch)
        s_out, s_scores = self.features(self.student, batch)
        loss = hidden_mse(
            self.projections.embedding(s_out.hidden_states[0]), t_out.hidden_states[0], mask
        )
        for m, g in enumerate(self.mapping, start=1):
            loss = loss + hidden_mse(
                self.projections.hidden(s_out.hidden_states[m]), t_out.hidden_states[g], mask
            )
            loss = loss + attention_mse(s_scores[m - 1], t_scores[g - 1], mask)
        return loss

    def prediction_loss(self, batch: dict[str, Tensor]) -> Tensor:
        from workers.distill.losses import hard_cross_entropy, soft_cross_entropy

        with torch.no_grad():
            t_logits = self.teacher(**self.inputs(batch)).logits
        s_logits = self.student(**self.inputs(batch)).logits
        soft = soft_cross_entropy(s_logits, t_logits, self.temperature)
        return soft + hard_cross_entropy(s_logits, batch["labels"])

    @torch.no_grad()
    def accuracy(self, model: Any) -> float:
        model.train(False)
        data, right = self.tensors["dev"], 0
        for i in range(0, len(data["labels"]), 64):
            batch = {k: v[i : i + 64] for k, v in data.items()}
            right += int((model(**self.inputs(batch)).logits.argmax(-1) == batch["labels"]).sum())
        return right / len(data["labels"])


# --- the engine, with the plain loop run inside its stage_started callback -----------------------


@dataclass
class Alternate:
    """Engine callbacks: before each engine stage, the same stage of the plain loop."""

    plain: Plain
    config: Any = None
    plain_s: dict[str, float] = field(default_factory=dict)
    engine_s: dict[str, float] = field(default_factory=dict)
    engine_steps: dict[str, int] = field(default_factory=dict)
    started: dict[str, dict[str, Any]] = field(default_factory=dict)
    caches: dict[str, dict[str, Any]] = field(default_factory=dict)
    _clock: float = 0.0

    def on_config(self, config: Any) -> None:
        self.config = config

    def on_progress(self, p: Any) -> None:
        if p.losses:
            self.engine_steps[p.stage] = self.engine_steps.get(p.stage, 0) + 1

    def on_event(self, e: Any) -> None:
        stage = e.data.get("stage")
        if e.type == "stage_started" and stage in STAGES:
            log(f"plain  {stage}")
            start = time.perf_counter()
            self.plain.run_stage(stage, self.config)
            self.plain_s[stage] = time.perf_counter() - start
            log(f"plain  {stage}: {fmt_seconds(self.plain_s[stage])}; engine {stage}")
            self.started[stage] = e.data
            self._clock = time.perf_counter()  # the engine's stage starts now
        elif e.type == "stage_finished" and stage in STAGES:
            self.engine_s[stage] = time.perf_counter() - self._clock
            log(f"engine {stage}: {fmt_seconds(self.engine_s[stage])}")
        elif e.data.get("phase") == "teacher_cache":
            self.caches[e.data["distill_stage"]] = e.data

    def should_stop(self) -> bool:
        return False


def engine_config(epochs: tuple[int, int, int], batch_size: int, max_length: int, seed: int) -> Any:
    from contract.config import DistillConfig

    finetune, intermediate, prediction = epochs
    return DistillConfig.model_validate(
        {
            "student": {"preset": STUDENT},
            "hyperparameters": {"batch_size": batch_size, "max_seq_length": max_length},
            "distillation": {
                "teacher_finetune": {"epochs": finetune},
                "intermediate": {"epochs": intermediate},
                "prediction": {"epochs": prediction},
            },
            "export": {"onnx": False, "latency_runs": 1},
            "checkpoint_every_steps": 10_000_000,  # stage ends only, as the plain loop saves none
            "seed": seed,
        }
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="rt-polarity")
    p.add_argument("--data-dir", type=Path, default=DATASETS_DIR)
    p.add_argument("--train-rows", type=int, default=0, help="stratified cut of train (0 = all)")
    p.add_argument("--dev-rows", type=int, default=0, help="stratified cut of dev (0 = all)")
    p.add_argument("--epochs", default="1,3,2", help="teacher fine-tune, intermediate, prediction")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--gemm-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--label", default="", help="a name for the run; 'cut' when sizes are cut")
    p.add_argument("--workdir", type=Path, default=None, help="the engine's folder (default: temp)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None, help="print a saved run's README table")
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Ceilings, both loops stage by stage, accuracies: everything the table and JSON hold."""
    import tempfile

    from transformers import AutoConfig

    from workers.distill.trainer import run

    epochs = tuple(int(x) for x in args.epochs.split(","))
    assert len(epochs) == 3, "--epochs takes three numbers"
    train = stratified_limit(
        read_split(args.dataset, "train", args.data_dir), args.train_rows or None, seed=args.seed
    )
    dev = stratified_limit(
        read_split(args.dataset, "dev", args.data_dir), args.dev_rows or None, seed=args.seed
    )
    threads = torch.get_num_threads()
    log(f"{len(train)} train rows, {len(dev)} dev rows, epochs {epochs}, {threads} threads")
    before = ceilings(args.gemm_size)
    log(f"ceiling GFLOP/s: { ({k: round(v / 1e9) for k, v in before.items()}) }")

    teacher = teacher_path()
    start = time.perf_counter()
    plain = Plain(teacher, train, dev, args.batch_size, args.max_seq_length, args.seed)
    plain_setup = time.perf_counter() - start
    calls = Alternate(plain)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="throughput-"))
    config = engine_config(epochs, args.batch_size, args.max_seq_length, args.seed)
    start = time.perf_counter()
    result = run(
        config, teacher=str(teacher), train=train, validation=dev, workdir=workdir, callbacks=calls
    )
    engine_total = time.perf_counter() - start - sum(calls.plain_s.values())
    start = time.perf_counter()
    plain_acc = {"teacher": plain.accuracy(plain.teacher), "student": plain.accuracy(plain.student)}
    plain_eval = time.perf_counter() - start
    after = ceilings(args.gemm_size)

    t_cfg = AutoConfig.from_pretrained(teacher, num_labels=2)
    s_cfg = t_cfg.__class__.from_dict(plain.student.config.to_dict())
    lengths = [int(m.sum()) for m in plain.tensors["train"]["attention_mask"]]
    stages = []
    for stage, n_epochs in zip(STAGES, epochs, strict=True):
        useful = stage_flops(stage, lengths, n_epochs, s_cfg, t_cfg)
        stages.append(
            {
                "stage": stage,
                "epochs": n_epochs,
                "samples": n_epochs * len(train),
                "useful_flop": useful,
                "plain_s": calls.plain_s[stage],
                "engine_s": calls.engine_s[stage],
                "engine_steps": calls.engine_steps.get(stage, 0),
                "engine_bf16": calls.started[stage].get("bf16"),
                "engine_padding": calls.started[stage].get("padding_fraction"),
                "plain_padding": 1 - sum(lengths) / (len(lengths) * args.max_seq_length),
                "teacher_cache": calls.caches.get(stage),
            }
        )
    return {
        "label": args.label
        or ("full" if not (args.train_rows or args.dev_rows) and epochs == (1, 3, 2) else "cut"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {
            "dataset": args.dataset,
            "train_rows": len(train),
            "dev_rows": len(dev),
            "epochs": list(epochs),
            "batch_size": args.batch_size,
            "max_seq_length": args.max_seq_length,
            "teacher": "all-MiniLM-L6-v2",
            "student": STUDENT,
            "threads": torch.get_num_threads(),
            "gemm_size": args.gemm_size,
        },
        "ceiling_flops": {k: max(before[k], after[k]) for k in before},
        "ceiling_runs": {"before": before, "after": after},
        "stages": stages,
        "plain": {"setup_s": plain_setup, "eval_s": plain_eval, "accuracy": plain_acc},
        "engine": {
            "total_s": engine_total,
            "overhead_s": engine_total - sum(calls.engine_s.values()),
            "accuracy": {k: result.metrics[k]["accuracy"] for k in ("teacher", "student")},
        },
        "environment": environment(),
    }


def derive(r: dict[str, Any]) -> dict[str, Any]:
    """Rates, speed-ups and ceiling fractions from the raw timings (also stored in the JSON)."""
    ceiling = r["ceiling_flops"]
    rows = []
    for s in r["stages"]:
        engine_ceiling = ceiling["bfloat16" if s["engine_bf16"] else "float32"]
        rows.append(
            {
                "stage": s["stage"],
                "epochs": s["epochs"],
                "plain_s": s["plain_s"],
                "engine_s": s["engine_s"],
                "speedup": s["plain_s"] / s["engine_s"],
                "plain_samples_per_s": s["samples"] / s["plain_s"],
                "engine_samples_per_s": s["samples"] / s["engine_s"],
                "plain_useful_flops": s["useful_flop"] / s["plain_s"],
                "engine_useful_flops": s["useful_flop"] / s["engine_s"],
                "plain_of_ceiling": s["useful_flop"] / s["plain_s"] / ceiling["float32"],
                "engine_of_ceiling": s["useful_flop"] / s["engine_s"] / engine_ceiling,
                "plain_padding": s["plain_padding"],
                "engine_padding": s["engine_padding"],
            }
        )
    plain_train = sum(s["plain_s"] for s in r["stages"])
    engine_train = sum(s["engine_s"] for s in r["stages"])
    useful = sum(s["useful_flop"] for s in r["stages"])
    plain_total = r["plain"]["setup_s"] + plain_train + r["plain"]["eval_s"]
    bf16 = all(s["engine_bf16"] for s in r["stages"])
    return {
        "stages": rows,
        "training": {
            "plain_s": plain_train,
            "engine_s": engine_train,
            "speedup": plain_train / engine_train,
            "plain_useful_flops": useful / plain_train,
            "engine_useful_flops": useful / engine_train,
            "plain_of_ceiling": useful / plain_train / ceiling["float32"],
            "engine_of_ceiling": useful / engine_train / ceiling["bfloat16" if bf16 else "float32"],
        },
        "end_to_end": {
            "plain_s": plain_total,
            "engine_s": r["engine"]["total_s"],
            "speedup": plain_total / r["engine"]["total_s"],
        },
    }


def report(r: dict[str, Any]) -> None:
    d = r["derived"]
    rows: list[list[Any]] = []
    for s in d["stages"]:
        rows.append(
            [
                s["stage"],
                s["epochs"],
                fmt_seconds(s["plain_s"]),
                fmt_seconds(s["engine_s"]),
                f"{s['speedup']:.1f}x",
                s["plain_samples_per_s"],
                s["engine_samples_per_s"],
                f"{s['plain_useful_flops'] / 1e9:.1f} ({s['plain_of_ceiling']:.0%})",
                f"{s['engine_useful_flops'] / 1e9:.1f} ({s['engine_of_ceiling']:.0%})",
                f"{s['plain_padding']:.0%} / {s['engine_padding']:.0%}",
            ]
        )
    t, e = d["training"], d["end_to_end"]
    rows.append(
        [
            "training",
            sum(s["epochs"] for s in d["stages"]),
            fmt_seconds(t["plain_s"]),
            fmt_seconds(t["engine_s"]),
            f"{t['speedup']:.1f}x",
            None,
            None,
            f"{t['plain_useful_flops'] / 1e9:.1f} ({t['plain_of_ceiling']:.0%})",
            f"{t['engine_useful_flops'] / 1e9:.1f} ({t['engine_of_ceiling']:.0%})",
            None,
        ]
    )
    rows.append(
        ["end to end", None, fmt_seconds(e["plain_s"]), fmt_seconds(e["engine_s"]),
         f"{e['speedup']:.1f}x", None, None, None, None, None]
    )  # fmt: skip
    s = r["settings"]
    table(
        f"throughput [{r['label']}] {s['dataset']} {s['train_rows']} rows, {s['teacher']} -> "
        f"{s['student']}, batch {s['batch_size']}, {s['threads']} threads, {r['date']}",
        ["stage", "epochs", "plain", "engine", "speed-up", "plain samples/s", "engine samples/s",
         "plain useful GFLOP/s (% fp32 ceiling)", "engine useful GFLOP/s (% ceiling)",
         "padding plain / engine"],
        rows,
    )  # fmt: skip
    c, pa, ea = r["ceiling_flops"], r["plain"]["accuracy"], r["engine"]["accuracy"]
    print(
        f"ceiling: float32 {c['float32'] / 1e9:.0f} GFLOP/s, bf16 {c['bfloat16'] / 1e9:.0f} "
        f"GFLOP/s ({s['gemm_size']}^3 GEMM, best of 3, before and after)\n"
        f"dev accuracy ({s['dev_rows']} rows): student plain {pa['student']:.4f}, engine "
        f"{ea['student']:.4f}; teacher plain {pa['teacher']:.4f}, engine {ea['teacher']:.4f}\n"
        f"engine outside its stages (load, tokenise, evaluate, export): "
        f"{fmt_seconds(r['engine']['overhead_s'])}"
    )


def markdown(r: dict[str, Any]) -> str:
    """The README's table of a saved run."""
    s, d = r["settings"], r["derived"]
    lines = [
        f"`{r['label']}`, {r['date']}: {s['dataset']} {s['train_rows']} train rows, epochs "
        f"{' + '.join(map(str, s['epochs']))}, batch {s['batch_size']}, {s['threads']} threads; "
        f"ceiling float32 {r['ceiling_flops']['float32'] / 1e9:.0f} / bf16 "
        f"{r['ceiling_flops']['bfloat16'] / 1e9:.0f} GFLOP/s",
        "",
        "| stage | plain | engine | speed-up | samples/s plain / engine "
        "| useful GFLOP/s plain / engine | of ceiling plain / engine | padding plain / engine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in d["stages"]:
        lines.append(
            f"| {x['stage']} ({x['epochs']} ep) | {fmt_seconds(x['plain_s'])} "
            f"| {fmt_seconds(x['engine_s'])} | {x['speedup']:.1f}x "
            f"| {x['plain_samples_per_s']:.1f} / {x['engine_samples_per_s']:.1f} "
            f"| {x['plain_useful_flops'] / 1e9:.1f} / {x['engine_useful_flops'] / 1e9:.1f} "
            f"| {x['plain_of_ceiling']:.0%} / {x['engine_of_ceiling']:.0%} "
            f"| {x['plain_padding']:.0%} / {x['engine_padding']:.0%} |"
        )
    t, e = d["training"], d["end_to_end"]
    lines.append(
        f"| **training** | {fmt_seconds(t['plain_s'])} | {fmt_seconds(t['engine_s'])} "
        f"| **{t['speedup']:.1f}x** | | {t['plain_useful_flops'] / 1e9:.1f} / "
        f"{t['engine_useful_flops'] / 1e9:.1f} | {t['plain_of_ceiling']:.0%} / "
        f"{t['engine_of_ceiling']:.0%} | |"
    )
    lines.append(
        f"| end to end | {fmt_seconds(e['plain_s'])} | {fmt_seconds(e['engine_s'])} "
        f"| {e['speedup']:.1f}x | | | | |"
    )
    pa, ea = r["plain"]["accuracy"], r["engine"]["accuracy"]
    lines += [
        "",
        f"Dev accuracy ({s['dev_rows']} rows): student plain {pa['student']:.4f}, engine "
        f"{ea['student']:.4f}; fine-tuned teacher plain {pa['teacher']:.4f}, engine "
        f"{ea['teacher']:.4f}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown is not None:
        import json

        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    results = measure(args)
    results["derived"] = derive(results)
    out = args.out or RESULTS_DIR / f"throughput-{results['label']}.json"
    write_json(out, results)
    report(results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
