"""TinyBERT data augmentation: replace single-piece words with a masked LM's top-K candidates.

For every word that the masked LM's tokenizer keeps as one piece, the word is masked in its
sentence and the LM's K most likely tokens become its candidates (all masked sentences of the
dataset run in batches on the device). Each of N_a copies of an example then swaps each such
word for a random candidate with probability p_t. TinyBERT replaces multi-piece words with
GloVe neighbours; no embedding table ships here, so those words stay as they are.
Results are cached per dataset hash, so a resumed or repeated run does not redo the work.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, PreTrainedTokenizerBase

from contract.config import AugmentationConfig
from contract.records import Example
from contract.vocab import EventType

from .errors import DistillError
from .precision import autocast_for

CACHE_VERSION = 1
EventFn = Callable[[EventType, str, dict[str, Any]], None]


_Fields = list[list[str] | None]  # an example's words: [text, text_pair or None]


@dataclass(frozen=True)
class _Slot:
    example: int
    field: int  # 0 = text, 1 = text_pair
    word: int


def augment(
    examples: Sequence[Example],
    settings: AugmentationConfig,
    *,
    tokenizer: PreTrainedTokenizerBase,
    cache_dir: Path,
    seed: int,
    device: torch.device,
    max_length: int,
    on_event: EventFn | None = None,
) -> list[Example]:
    """The augmented copies (originals not included), from the cache when it has them."""
    assert settings.mlm_model is not None  # the config validator guarantees it
    key = _cache_key(examples, settings, seed=seed, max_length=max_length)
    path = cache_dir / f"{key}.jsonl"
    if path.exists():
        if on_event:
            on_event(
                "stage_finished",
                "augmentation loaded from cache",
                {"phase": "augment", "cached": True},
            )
        return _read(path)
    if on_event:
        on_event(
            "stage_started", "augmentation started", {"phase": "augment", "examples": len(examples)}
        )
    mlm, mlm_tokenizer = load_mlm(settings.mlm_model, device=device)
    basic = _word_splitter(tokenizer)
    fields: list[_Fields] = [
        [basic(e.text), basic(e.text_pair) if e.text_pair is not None else None] for e in examples
    ]
    slots = [
        _Slot(i, f, w)
        for i, pair in enumerate(fields)
        for f, words in enumerate(pair)
        if words is not None
        for w, word in enumerate(words)
        if _single_piece(mlm_tokenizer, word)
    ]
    candidates = _candidates(
        mlm,
        mlm_tokenizer,
        fields,
        slots,
        k=settings.k,
        batch_size=settings.batch_size,
        device=device,
        max_length=max_length,
    )
    out = _replace(examples, fields, zip(slots, candidates, strict=True), settings, seed=seed)
    _write(path, out)
    if on_event:
        on_event(
            "stage_finished",
            f"augmentation made {len(out)} examples",
            {"phase": "augment", "examples": len(out), "cached": False},
        )
    return out


def _replace(
    examples: Sequence[Example],
    fields: list[_Fields],
    candidates: Iterable[tuple[_Slot, list[str]]],
    settings: AugmentationConfig,
    *,
    seed: int,
) -> list[Example]:
    """Up to n_a new copies of each example, each slot swapped with probability p_t."""
    by_example: dict[int, list[tuple[_Slot, list[str]]]] = {}
    for slot, cands in candidates:
        by_example.setdefault(slot.example, []).append((slot, cands))
    rng = random.Random(seed)
    out: list[Example] = []
    for i, e in enumerate(examples):
        seen = {(e.text, e.text_pair)}
        for _ in range(settings.n_a):
            words = [list(w) if w is not None else None for w in fields[i]]
            for slot, cands in by_example.get(i, []):
                target = words[slot.field]
                if target is not None and cands and rng.random() < settings.p_t:
                    target[slot.word] = rng.choice(cands)
            text = " ".join(words[0] or [])
            pair = " ".join(words[1]) if words[1] is not None else None
            if (text, pair) not in seen:
                seen.add((text, pair))
                out.append(Example(text=text, text_pair=pair, label=e.label))
            if len(out) >= settings.max_examples:
                return out
    return out


def load_mlm(source: str, *, device: torch.device) -> tuple[Any, PreTrainedTokenizerBase]:
    """A masked LM and its tokenizer; a checkpoint without trained MLM weights is refused."""
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        archs = getattr(config, "architectures", None) or []
        if not any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs):
            raise DistillError(
                "mlm_head_missing",
                f"{source!r} has no masked-LM head (architectures: {archs or 'none'}); "
                "augmentation needs a model saved as *ForMaskedLM",
            )
        model, info = AutoModelForMaskedLM.from_pretrained(
            source, trust_remote_code=False, use_safetensors=True, output_loading_info=True
        )
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise DistillError("mlm_not_found", f"cannot load masked LM {source!r}: {exc}") from exc
    missing = [k for k in info.get("missing_keys", []) if "decoder" in k or "predictions" in k]
    if missing:
        raise DistillError("mlm_head_missing", f"{source!r} lacks MLM weights: {missing[:3]}")
    if tokenizer.mask_token_id is None:
        raise DistillError("mlm_head_missing", f"{source!r} has no mask token")
    return model.to(device).eval(), tokenizer


def _candidates(
    mlm: Any,
    tokenizer: PreTrainedTokenizerBase,
    fields: list[_Fields],
    slots: list[_Slot],
    *,
    k: int,
    batch_size: int,
    device: torch.device,
    max_length: int,
) -> list[list[str]]:
    """Top-k single-word replacements for every slot, batched on the device."""
    special = set(tokenizer.all_special_ids)
    piece_cache: dict[str, list[int]] = {}

    def pieces(word: str) -> list[int]:
        if word not in piece_cache:
            ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))
            piece_cache[word] = ids if isinstance(ids, list) else [ids]
        return piece_cache[word]

    out: list[list[str]] = []
    for start in range(0, len(slots), batch_size):
        rows = []
        for slot in slots[start : start + batch_size]:
            words = fields[slot.example][slot.field]
            assert words is not None  # slots exist only for present fields
            rows.append(_masked(words, slot.word, tokenizer, pieces, max_length=max_length))
        logits = _mlm_logits(mlm, [ids for ids, _ in rows], tokenizer.pad_token_id, device)
        for r, (_, pos) in enumerate(rows):
            out.append(_top_words(logits[r, pos], tokenizer, special, k) if pos >= 0 else [])
    return out


def _masked(
    words: list[str],
    masked: int,
    tokenizer: PreTrainedTokenizerBase,
    pieces: Callable[[str], list[int]],
    *,
    max_length: int,
) -> tuple[list[int], int]:
    """([CLS] pieces with word `masked` as one [MASK] [SEP], its position or -1 if cut off)."""
    assert tokenizer.mask_token_id is not None  # load_mlm refuses a tokenizer without one
    ids = [tokenizer.cls_token_id]
    pos = -1
    for w, word in enumerate(words):
        if w == masked:
            pos = len(ids)
            ids.append(tokenizer.mask_token_id)
        else:
            ids.extend(pieces(word))
    ids = ids[: max_length - 1] + [tokenizer.sep_token_id]
    return [int(i) for i in ids], pos if pos < max_length - 1 else -1


def _mlm_logits(
    mlm: Any, rows: list[list[int]], pad_id: int | None, device: torch.device
) -> torch.Tensor:
    """(rows, longest row, vocabulary) masked-LM logits of right-padded rows."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id or 0, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for r, ids in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
    # bf16 on a GPU only, as before hyperparameters.bf16: the candidates stay as they were
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    with torch.no_grad(), autocast_for(device, bf16=bf16):
        logits: torch.Tensor = mlm(
            input_ids=input_ids.to(device), attention_mask=mask.to(device)
        ).logits
    return logits


def _top_words(
    logits: torch.Tensor, tokenizer: PreTrainedTokenizerBase, special: set[int], k: int
) -> list[str]:
    """The k likeliest whole words of one (vocabulary,) row of logits."""
    # a few extra so that dropping specials and sub-word pieces still leaves k
    top = logits.float().topk(min(k + 10, logits.shape[-1])).indices.tolist()
    words = [
        tok
        for tid, tok in zip(top, tokenizer.convert_ids_to_tokens(top), strict=True)
        if tid not in special and not tok.startswith("##")
    ]
    return words[:k]


def _word_splitter(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], list[str]]:
    """The tokenizer's own normaliser and pre-tokeniser (BERT: lower-case, split punctuation)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda text: text.split()

    def split(text: str) -> list[str]:
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        if backend.pre_tokenizer is None:
            return text.split()
        return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(text)]

    return split


def _single_piece(tokenizer: PreTrainedTokenizerBase, word: str) -> bool:
    pieces = tokenizer.tokenize(word)
    return len(pieces) == 1 and pieces[0] != tokenizer.unk_token and word.isalpha()


def _cache_key(
    examples: Sequence[Example], settings: AugmentationConfig, *, seed: int, max_length: int
) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "version": CACHE_VERSION,
                "settings": settings.model_dump(mode="json"),
                "seed": seed,
                "max_length": max_length,
            },
            sort_keys=True,
        ).encode()
    )
    for e in examples:
        h.update(json.dumps([e.text, e.text_pair, e.label]).encode())
    return h.hexdigest()[:32]


def _write(path: Path, examples: Sequence[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"text": e.text, "text_pair": e.text_pair, "label": e.label}) + "\n")
    os.replace(tmp, path)


def _read(path: Path) -> list[Example]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [Example(r["text"], r["text_pair"], r["label"]) for r in rows]
