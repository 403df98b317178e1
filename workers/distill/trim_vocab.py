"""A student vocabulary of only the tokens the data uses: a smaller embedding table, the same
tokenisation of the training text."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import Encoded
from .errors import DistillError


@dataclass(frozen=True)
class StudentVocab:
    tokenizer: PreTrainedTokenizerBase
    kept_ids: list[int] | None = None  # teacher ids the student keeps, in its order; None = all
    input_map: Tensor | None = None  # (teacher vocabulary,) teacher id -> student id


def student_vocab(
    tokenizer: PreTrainedTokenizerBase, data: Iterable[Encoded], *, trim: bool
) -> StudentVocab:
    """The teacher's tokenizer, or (trim) one keeping only the ids `data` uses and the specials."""
    if not trim:
        return StudentVocab(tokenizer)
    used: set[int] = set()
    for e in data:
        used.update(e.input_ids)
    trimmed, kept = trim_tokenizer(tokenizer, used)
    unk = kept.index(tokenizer.unk_token_id)
    table = torch.full((len(tokenizer),), unk, dtype=torch.long)
    table[torch.tensor(kept)] = torch.arange(len(kept))
    return StudentVocab(trimmed, kept, table)


def trim_tokenizer(
    tokenizer: PreTrainedTokenizerBase, used_ids: set[int]
) -> tuple[PreTrainedTokenizerBase, list[int]]:
    """A WordPiece tokenizer keeping only `used_ids` and the special tokens; (new, kept old ids).

    Greedy longest-match WordPiece splits every word it saw the same way with the smaller
    vocabulary (each piece it picked is kept, longer ones never existed), so the teacher's ids
    map one-to-one onto the student's on the training data; unseen words may become [UNK].
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    if model.get("type") != "WordPiece":
        raise DistillError(
            "trim_vocab_unsupported",
            f"vocabulary trimming supports WordPiece tokenizers, not {model.get('type')}",
        )
    kept = sorted(used_ids | set(tokenizer.all_special_ids))
    by_id = {i: tok for tok, i in model["vocab"].items()}
    remap = {old: new for new, old in enumerate(kept)}
    model["vocab"] = {by_id[old]: new for old, new in remap.items()}
    for added in state.get("added_tokens", []):
        added["id"] = remap.get(added["id"], added["id"])
    post = state.get("post_processor") or {}
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [remap[i] for i in special["ids"]]
    specials = {
        k: getattr(tokenizer, k)
        for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
        if getattr(tokenizer, k, None) is not None
    }
    trimmed = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # unannotated __init__
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        model_max_length=tokenizer.model_max_length,
        # the teacher's inputs (token_type_ids too): what the exported ONNX graph is fed
        model_input_names=list(tokenizer.model_input_names),
        **specials,
    )
    return trimmed, kept


def shrink_embeddings(model: PreTrainedModel, kept_ids: Sequence[int]) -> None:
    """Keep only the word-embedding rows of `kept_ids`, in that order."""
    old = model.get_input_embeddings()
    assert isinstance(old, nn.Embedding)
    ids = list(kept_ids)
    new = nn.Embedding(len(ids), old.embedding_dim, padding_idx=None)
    with torch.no_grad():
        new.weight.copy_(old.weight[torch.tensor(ids, dtype=torch.long)])
    model.set_input_embeddings(new)
    model.config.vocab_size = len(ids)
    pad = getattr(model.config, "pad_token_id", None)
    if pad is not None:
        model.config.pad_token_id = ids.index(pad) if pad in ids else None
