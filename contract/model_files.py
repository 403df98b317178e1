"""What a teacher's save_pretrained folder must hold to be distilled: checked by the API's upload
and by the engine (for catalog and hub teachers too) with the same rules; no torch here.

Without tokenizer files transformers builds a tokenizer of a handful of special tokens and says
nothing: every word becomes [UNK] and the run "succeeds" with a teacher and a student that
predict one class.
"""

from __future__ import annotations

import json
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
NO_TOKENIZER = "no tokenizer (tokenizer.json or vocab.txt) in the folder"
# Embedding tables are sometimes padded past the tokenizer's vocabulary (to a multiple of 64 or
# 128, for speed); more rows than that without a token means the tokenizer is not the model's.
EMBEDDING_PADDING = 128


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def tokenizer_size(folder: Path) -> int | None:
    """The number of ids a folder's tokenizer files give out; None when they cannot be read."""
    try:
        if (folder / "tokenizer.json").is_file():
            state = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            ids = {int(i) for i in state["model"]["vocab"].values()}
            ids |= {int(t["id"]) for t in state.get("added_tokens") or []}
            return max(ids) + 1 if ids else 0
        if (folder / "vocab.txt").is_file():
            with (folder / "vocab.txt").open(encoding="utf-8") as f:
                return sum(1 for _ in f)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return None


def vocabulary_mismatch(tokens: int, embedding_rows: int) -> str | None:
    """Why a tokenizer of `tokens` ids does not fit `embedding_rows` word embeddings, or None."""
    if tokens > embedding_rows:
        return (
            f"the tokenizer gives out {tokens} token ids but the model has only "
            f"{embedding_rows} word embeddings: it is not this model's tokenizer"
        )
    if tokens + EMBEDDING_PADDING < embedding_rows:
        return (
            f"the tokenizer knows {tokens} tokens but the model has {embedding_rows} word "
            "embeddings: it is not this model's tokenizer (every other word would be [UNK])"
        )
    return None
