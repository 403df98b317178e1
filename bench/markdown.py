"""Render a bench/quality.py JSON file as the README's Markdown tables, one per dataset.

python bench/markdown.py bench/results/quality.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HEADER = (
    "| model | variant | test acc | macro-F1 | retention acc / F1 | params | size | "
    "b=1 ms | b=32 ms | speed-up b=1 / b=32 | train |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def human(seconds: float) -> str:
    """13 min 29 s, 1 h 47 min, 46.0 s: the README's style."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60} min"


def cells(r: dict[str, Any]) -> str:
    # A run killed before its final timing has rows without latency: shown as "n/a".
    lat, up = r.get("latency_ms"), r.get("speedup")
    timing = (
        f"{lat['batch_1']['median']:.1f} | {lat['batch_32']['median']:.1f} | "
        f"{up['batch_1']:.1f}x / {up['batch_32']:.1f}x"
        if lat and up
        else "n/a | n/a | n/a"
    )
    return (
        f"| {r['model']} | {r['variant']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | "
        f"{r['retention']:.1%} / {r['retention_macro_f1']:.1%} | "
        f"{r['parameters'] / 1e6:.2f}M | {r['size_bytes'] / 1e6:.1f} MB | "
        f"{timing} | {human(r['train_wall_s'])} |"
    )


def render(payload: dict[str, Any]) -> str:
    out = [f"Total wall time: {human(payload['wall_s'])} ({payload['wall_s']:.0f} s)."]
    for dataset in dict.fromkeys(r["dataset"] for r in payload["results"]):
        rows = [r for r in payload["results"] if r["dataset"] == dataset]
        teacher = next(r for r in rows if r["variant"] == "fine-tuned teacher")
        out += [
            "",
            f"**{dataset}** ({teacher['train_examples']} training examples, "
            f"{teacher['test_examples']} test examples)",
            "",
            HEADER,
            *(cells(r) for r in rows),
        ]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())))
