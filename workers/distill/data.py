"""Tokenisation, label ids, a seeded hold-out split and dynamically padded, seeded batches."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from contract.records import Example

from .errors import DistillError

Batch = dict[str, Tensor]


@dataclass(frozen=True, slots=True)
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int]
    label: int | float | None


def encode(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    task: str,
    label2id: dict[str, int],
) -> list[Encoded]:
    """Tokenise (truncating longest-first for pairs) and map labels to ids or floats."""
    out: list[Encoded | None] = [None] * len(examples)
    singles = [i for i, e in enumerate(examples) if e.text_pair is None]
    pairs = [i for i, e in enumerate(examples) if e.text_pair is not None]
    for idx, with_pair in ((singles, False), (pairs, True)):
        if not idx:
            continue
        texts = [examples[i].text for i in idx]
        second = [examples[i].text_pair or "" for i in idx] if with_pair else None
        enc = tokenizer(texts, second, truncation=True, max_length=max_length)
        types = enc.get("token_type_ids")
        for j, i in enumerate(idx):
            ids = list(enc["input_ids"][j])
            tt = list(types[j]) if types is not None else [0] * len(ids)
            out[i] = Encoded(ids, tt, _label(examples[i], i, task=task, label2id=label2id))
    return [e for e in out if e is not None]


def _label(
    example: Example, index: int, *, task: str, label2id: dict[str, int]
) -> int | float | None:
    if task == "general":
        return None
    if example.label is None:
        raise DistillError("dataset_invalid", f"example {index}: label missing")
    if task == "regression":
        try:
            return float(example.label)
        except (TypeError, ValueError) as exc:
            raise DistillError(
                "dataset_invalid", f"example {index}: label {example.label!r} is not a number"
            ) from exc
    name = str(example.label)
    if name not in label2id:
        raise DistillError(
            "dataset_invalid", f"example {index}: label {name!r} is not among {sorted(label2id)}"
        )
    return label2id[name]


def collate(items: Sequence[Encoded], *, pad_id: int) -> Batch:
    """Pad to the longest item of this batch (dynamic padding)."""
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(items), width), dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        types[row, :n] = torch.tensor(e.token_type_ids)
        mask[row, :n] = 1
    batch: Batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if items[0].label is not None:
        dtype = torch.float32 if isinstance(items[0].label, float) else torch.long
        batch["labels"] = torch.tensor([e.label for e in items], dtype=dtype)
    return batch


# Rows are sorted by length within chunks of this many batches, so a batch holds rows of
# about one length: padding falls from ~48% of rt-polarity's tokens (random batches) to ~2%.
# A chunk is drawn at random from the whole set, and the batches of all chunks are shuffled
# together, so the order across lengths stays random.
BUCKET_BATCHES = 50


class Batches:
    """Seeded, length-bucketed batches of one dataset; the batches of (stream, epoch) are a pure
    function of the seed.

    That makes the data-order state just (epoch, batch index): a resumed run rebuilds the same
    batches and skips what it has seen. The last partial batch is kept. Each batch also holds
    "index", its rows' positions in `data` (what the teacher cache looks targets up by).
    """

    def __init__(
        self,
        data: Sequence[Encoded],
        *,
        batch_size: int,
        seed: int,
        pad_id: int,
        bucket_batches: int = BUCKET_BATCHES,
        pin_memory: bool = False,
    ) -> None:
        if not data:
            raise DistillError("dataset_invalid", "no examples to train on")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self.bucket_batches = bucket_batches  # 0 or 1: plain random batches
        self.pin_memory = pin_memory  # page-locked batches: asynchronous copies to a GPU
        self.lengths = torch.tensor([len(e.input_ids) for e in data])

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def plan(self, *, stream: int, epoch: int) -> list[list[int]]:
        """The rows of every batch of `epoch` for a named stream (one per stage), in order."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + stream * 10_007 + epoch)
        order = torch.randperm(len(self.data), generator=g)
        size = self.batch_size
        if self.bucket_batches <= 1:
            return [order[i : i + size].tolist() for i in range(0, len(order), size)]
        chunk = size * self.bucket_batches
        batches: list[list[int]] = []
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            # stable: rows of one length keep their random order
            rows = rows[torch.sort(self.lengths[rows], stable=True).indices]
            batches += [rows[i : i + size].tolist() for i in range(0, len(rows), size)]
        # only the last chunk can end in a partial batch; it moves with the rest
        shuffled = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in shuffled]

    def epoch(self, *, stream: int, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` for a named stream, from batch `start`."""
        for rows in self.plan(stream=stream, epoch=epoch)[start:]:
            batch = collate([self.data[i] for i in rows], pad_id=self.pad_id)
            batch["index"] = torch.tensor(rows)
            if self.pin_memory:
                batch = {k: v.pin_memory() for k, v in batch.items()}
            yield batch

    def padding_fraction(self, *, stream: int, epoch: int) -> float:
        """Padding tokens / all tokens over the batches of one epoch (cost: no collation)."""
        padded = real = 0
        for rows in self.plan(stream=stream, epoch=epoch):
            lengths = self.lengths[rows]
            padded += int(lengths.max()) * len(rows)
            real += int(lengths.sum())
        return 1.0 - real / padded

    def in_order(self, batch_size: int | None = None) -> Iterator[Batch]:
        size = batch_size or self.batch_size
        for start in range(0, len(self.data), size):
            yield collate(self.data[start : start + size], pad_id=self.pad_id)


def holdout(
    examples: Sequence[Example], *, fraction: float, seed: int, stratify: bool
) -> tuple[list[Example], list[Example]]:
    """(train, validation): a seeded slice of `fraction`, stratified by label when asked."""
    if len(examples) < 2:
        raise DistillError(
            "dataset_invalid", "need at least 2 examples to hold out a validation set"
        )
    rng = random.Random(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        groups[str(e.label) if stratify else ""].append(i)
    held: set[int] = set()
    for key in sorted(groups):
        idx = groups[key]
        rng.shuffle(idx)
        take = round(len(idx) * fraction)
        if stratify and len(idx) > 1:
            take = max(1, take)
        held.update(idx[: min(take, len(idx) - 1)])
    if not held:
        held.add(rng.randrange(len(examples)))
    train = [e for i, e in enumerate(examples) if i not in held]
    val = [e for i, e in enumerate(examples) if i in held]
    return train, val
