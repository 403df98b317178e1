"""Builders for tests: real (tiny) objects, never mocks."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

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
