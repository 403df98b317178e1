"""Builders for tests: real (tiny) objects, never mocks."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- tiny BERTs and their WordPiece vocabulary (tests/distill) ---

# shared/ lies beside the checkout, in CI as here; DISTILLERY_DATASETS points elsewhere (as in
# bench/), for a checkout that lives somewhere else.
_BESIDE = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SHARED_DATASETS = Path(os.environ.get("DISTILLERY_DATASETS", _BESIDE))
TINY_SENTIMENT = SHARED_DATASETS / "tiny-sentiment"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def read_jsonl_examples(path: Path) -> list:
    """tiny-sentiment rows as records.Example."""
    from contract.records import Example

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        Example(text=r["text"], text_pair=r.get("text_pair"), label=r.get("label")) for r in rows
    ]


def tiny_vocab(texts: Sequence[str], *, words: int = 400) -> list[str]:
    """Specials, every character alone and as a ##suffix, then the most frequent words."""
    lowered = [t.lower() for t in texts]
    chars = sorted({c for t in lowered for c in t if not c.isspace()})
    counts = Counter(w for t in lowered for w in re.findall(r"[a-z0-9]+", t))
    frequent = [w for w, _ in counts.most_common(words) if len(w) > 1]
    vocab = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars if c.isalnum()] + frequent
    return list(dict.fromkeys(vocab))


def save_tiny_tokenizer(directory: Path, vocab: Sequence[str]):  # -> BertTokenizer
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)})
    tokenizer.save_pretrained(directory)
    return tokenizer


def save_tiny_bert(
    directory: Path,
    vocab: Sequence[str],
    *,
    head: str | None = "classification",
    labels: Sequence[str] = ("neg", "pos"),
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    intermediate: int = 64,
    seed: int = 0,
) -> Path:
    """A random tiny BERT saved with its tokenizer; head: classification/regression/mlm/None."""
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        BertModel,
    )

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model: torch.nn.Module
    if head == "classification":
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
        model = BertForSequenceClassification(config)
    elif head == "regression":
        config.num_labels = 1
        config.problem_type = "regression"
        model = BertForSequenceClassification(config)
    elif head == "mlm":
        model = BertForMaskedLM(config)
    else:
        model = BertModel(config)
    model.save_pretrained(directory)
    save_tiny_tokenizer(directory, vocab)
    return directory


# --- engine runs (tests/distill) ---


@dataclass
class Recorder:
    """Engine callbacks that keep everything and can ask to stop after a given global step."""

    stop_at: int | None = None
    progress: list[Any] = field(default_factory=list)  # workers.distill.callbacks.Progress
    events: list[Any] = field(default_factory=list)  # workers.distill.callbacks.Event
    configs: list[Any] = field(default_factory=list)  # contract.config.DistillConfig

    def on_config(self, config: Any) -> None:
        self.configs.append(config)

    def on_progress(self, p: Any) -> None:
        self.progress.append(p)

    def on_event(self, e: Any) -> None:
        self.events.append(e)

    def should_stop(self) -> bool:
        trained = [p for p in self.progress if p.losses]
        return self.stop_at is not None and bool(trained) and trained[-1].step >= self.stop_at

    def curve(self) -> list[tuple[str, int, float]]:
        return [(p.stage, p.step, p.losses["total"]) for p in self.progress if p.losses]


def tiny_config(**overrides: Any):  # -> contract.config.DistillConfig
    """A 2-layer, 16-wide student; one epoch per stage; no ONNX unless asked."""
    from contract.config import DistillConfig

    raw: dict[str, Any] = {
        "student": {
            "preset": None,
            "num_layers": 2,
            "hidden_size": 16,
            "num_attention_heads": 4,
            "intermediate_size": 32,
        },
        "hyperparameters": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3},
        "export": {"onnx": False, "latency_runs": 1},
        "log_every_steps": 2,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return DistillConfig.model_validate(raw)


# --- service-level builders (tests/api, tests/workers): archives and dataset files ---


def read_jsonl(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def zip_folder(folder: Path, *, prefix: str = "") -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, prefix + path.relative_to(folder).as_posix())
    return buf.getvalue()


def tar_gz_folder(folder: Path) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return buf.getvalue()


def jsonl_bytes(rows: object) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")  # type: ignore[attr-defined]


# --- jobs and the client (tests/client, tests/jobs) ---

# Accepted without loading anything: the worker, which most client tests never start, resolves it.
HUB_TEACHER = "google-bert/bert-base-uncased"

# A student small enough that a real worker trains it in seconds on a CPU.
TINY_STUDENT = {
    "preset": None,
    "num_layers": 2,
    "hidden_size": 16,
    "num_attention_heads": 2,
    "intermediate_size": 32,
}


def unique_dataset(directory: Path, rows: int = 8) -> Path:
    """A small valid JSONL file whose bytes (and so sha256) no other test shares."""
    import uuid

    tag = uuid.uuid4().hex
    path = directory / f"ds-{tag[:8]}.jsonl"
    path.write_bytes(
        jsonl_bytes(
            [{"text": f"row {i} {tag}", "label": ("neg", "pos")[i % 2]} for i in range(rows)]
        )
    )
    return path


# --- readers (tests/api, tests/workers): what a test left in the real queue ---


def queued_job_ids(queue) -> list[str]:  # queue: redis.Redis
    """The job ids in the real Redis queue, read from the Celery messages themselves."""
    import base64

    from app.config import get_settings

    ids = []
    for raw in queue.lrange(get_settings().queue_name, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "distillery.run_job"
        args, _, _ = json.loads(base64.b64decode(message["body"]))
        ids.extend(args)
    return ids
