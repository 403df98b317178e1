"""The teacher's targets computed once per stage and read back every step, instead of a teacher
forward pass on every step of every epoch.

Design: one pass over the stage's examples at its start (in length order, so batches carry
almost no padding) stores each example's targets by itself, real tokens only. A training batch,
whatever rows it holds, gathers its rows' tokens back and pads them with zeros (every loss
masks padding). So length-bucketed batches may differ from epoch to epoch, and the cache does
not care how the epoch is shuffled. The pass is deterministic, so a resumed run reads the very
targets the interrupted one read: exact resume holds. Against a teacher run on the training
batch itself, targets differ only by float rounding in the batch's width (SDPA sums over the
padded length), about 1e-6 relative in float32.

Where: logits ((n, C) float32) always in memory. Hidden states and q/k(/v) of the matched layers,
(tokens, features, width), in bf16 when the run computes in bf16 (float32 otherwise): in memory
within the memory budget, else in a file in the run's folder (memory-mapped; a resumed run
reuses a complete one), else, with too little disk, not at all (the teacher runs every step).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from contract.config import TeacherCacheConfig

from .checkpoint import weights_digest
from .data import Batch, Encoded, collate
from .features import Features, Targets, TeacherTargets
from .steps import TargetCache, TargetSpec

Where = Literal["memory", "disk", "off"]
DISK_HEADROOM = 1 << 30  # bytes left free beside a disk cache, for checkpoints and the export
MIN_BUILD_BATCH = 64  # the build pass keeps no graph, so a larger batch costs little memory


@dataclass(frozen=True)
class CachePlan:
    where: Where
    bytes: int  # of the per-token targets, plus logits
    dtype: torch.dtype
    tokens: int
    features: int  # tensors per token: hidden states and projections
    reason: str  # why `where`, for the event
    warning: bool = False  # asked for, but there was no room


def stage_cache(
    settings: TeacherCacheConfig,
    *,
    data: Sequence[Encoded],
    epochs: int,
    bf16: bool,
    folder: Path,
    name: str,
    key: str,
    pad_id: int,
    batch_size: int,
    labels: int,
) -> TargetCache:
    """What distill_step wraps the live teacher with, for one stage over `data`."""

    def wrap(live: TeacherTargets, spec: TargetSpec) -> Targets:
        plan = plan_cache(
            settings,
            spec,
            lengths=[len(e.input_ids) for e in data],
            width=int(live.model.config.hidden_size),
            labels=labels,
            bf16=bf16,
            epochs=epochs,
            folder=folder,
        )
        path = folder / f"{name}.bin" if plan.where == "disk" else None
        return TeacherCache(
            live, spec, data, plan=plan, pad_id=pad_id, batch_size=batch_size, path=path, key=key
        )

    return wrap


def plan_cache(
    settings: TeacherCacheConfig,
    spec: TargetSpec,
    *,
    lengths: Sequence[int],
    width: int,
    labels: int,
    bf16: bool,
    epochs: int,
    folder: Path,
) -> CachePlan:
    """Where the targets of one stage go; one epoch gains nothing from a cache of its features."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    tokens, features = sum(lengths), len(spec.hidden) + len(spec.qkv)
    size = (tokens + 1) * features * width * dtype.itemsize + len(lengths) * labels * 4

    def to(where: Where, reason: str) -> CachePlan:
        return CachePlan(where, size, dtype, tokens, features, reason)

    if settings.mode == "off":
        return to("off", "teacher_cache.mode is off")
    if features == 0:
        return to("memory", "logits only")
    if settings.mode == "auto" and epochs < 2:
        return to("off", "one epoch reads each target once")
    if settings.mode == "memory" or (
        settings.mode == "auto" and size <= settings.memory_mb * 2**20
    ):
        return to("memory", "asked for" if settings.mode == "memory" else "within the budget")
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free - size >= DISK_HEADROOM:
        return to("disk", "asked for" if settings.mode == "disk" else "over the memory budget")
    return CachePlan("off", size, dtype, tokens, features, f"only {free} bytes free", True)


@dataclass
class CacheStats:
    plan: CachePlan
    build_s: float = 0.0
    reused: bool = False  # a complete file from an earlier process of this run
    hits: int = 0  # batches served
    rows: int = 0  # examples served
    path: str | None = None
    digest: str = field(default="", repr=False)

    def summary(self) -> dict[str, object]:
        p = self.plan
        return {
            "where": p.where,
            "reason": p.reason,
            "bytes": p.bytes,
            "dtype": str(p.dtype).removeprefix("torch."),
            "tokens": p.tokens,
            "features": p.features,
            "build_s": round(self.build_s, 3),
            "reused": self.reused,
            "hits": self.hits,
            "rows": self.rows,
            "path": self.path,
            "warning": p.warning,
        }


class TeacherCache:
    """Targets of `live` for every example of `data`, built once by `prepare`; with the plan
    "off", the live teacher's every step (and the plan, for the report)."""

    def __init__(
        self,
        live: TeacherTargets,
        spec: TargetSpec,
        data: Sequence[Encoded],
        *,
        plan: CachePlan,
        pad_id: int,
        batch_size: int,
        path: Path | None,
        key: str,
    ) -> None:
        self.live, self.spec, self.data, self.pad_id = live, spec, data, pad_id
        self.batch_size = max(batch_size, MIN_BUILD_BATCH)
        self.stats = CacheStats(plan, path=str(path) if path else None)
        self.key = key
        lengths = torch.tensor([len(e.input_ids) for e in data])
        # build order: by length, then position (deterministic); each example's first token row
        self.order = torch.sort(lengths, stable=True).indices
        self.offsets = torch.zeros(len(data), dtype=torch.long)
        self.offsets[self.order] = torch.cumsum(lengths[self.order], 0) - lengths[self.order]
        self.pad_row = int(lengths.sum())  # stays zero: what padding positions read
        width = int(live.model.config.hidden_size)
        self.shape = (self.pad_row + 1, plan.features, width)
        self.path = path if plan.features and plan.where == "disk" else None
        if self.path is not None:
            self.stats.reused = self._complete()
            if not self.stats.reused:  # a torn or foreign file is never read
                self.path.with_suffix(".json").unlink(missing_ok=True)
                self.path.unlink(missing_ok=True)
        self.off = plan.where == "off"
        self.store = None
        if plan.features and not self.off:
            self.store = _allocate(self.shape, plan.dtype, self.path)
        self.logits: Tensor | None = None

    # --- building -------------------------------------------------------------------------------

    def prepare(self, stopping: Callable[[], bool]) -> bool:
        """One pass of the teacher over the data, in length order; False if `stopping()`."""
        if self.off:
            return True
        start = time.perf_counter()
        if not self.stats.reused:
            for rows, batch in self._build_batches():
                if stopping():
                    return False
                self._store(rows, self.live(batch, hidden=bool(self.spec.hidden)))
            self._mark_complete()
        if self.spec.logits and self.logits is None:  # reused file: logits are not kept on disk
            for rows, batch in self._build_batches():
                if stopping():
                    return False
                self._store_logits(rows, self.live(batch, hidden=False))
        self.stats.build_s = time.perf_counter() - start
        return True

    def _build_batches(self) -> Iterator[tuple[Tensor, Batch]]:
        for i in range(0, len(self.order), self.batch_size):
            rows = self.order[i : i + self.batch_size]
            yield rows, collate([self.data[int(r)] for r in rows], pad_id=self.pad_id)

    def _store(self, rows: Tensor, f: Features) -> None:
        if self.spec.logits:
            self._store_logits(rows, f)
        if self.store is None:
            return
        parts = [f.hidden[layer] for layer in self.spec.hidden]
        parts += [f.qkv[key] for key in self.spec.qkv]
        stacked = torch.stack(parts, dim=2)  # (b, L, features, width)
        mask = self._mask(rows, stacked.shape[1]).to(stacked.device)
        real = stacked[mask].to("cpu", self.store.dtype)  # (tokens, features, width), row-major
        first = int(self.offsets[rows[0]])
        self.store[first : first + real.shape[0]] = real

    def _store_logits(self, rows: Tensor, f: Features) -> None:
        assert f.logits is not None  # a prediction target needs a head
        if self.logits is None:
            self.logits = torch.zeros(len(self.data), f.logits.shape[-1])
        self.logits[rows] = f.logits.detach().float().cpu()

    def _mask(self, rows: Tensor, width: int) -> Tensor:
        lengths = self.offsets.new_tensor([len(self.data[int(r)].input_ids) for r in rows])
        return torch.arange(width)[None, :] < lengths[:, None]

    # --- reading --------------------------------------------------------------------------------

    def __call__(self, batch: Batch, *, hidden: bool = True) -> Features:
        """The batch's targets, padded with zeros to its width, on the teacher's device."""
        if self.off:
            return self.live(batch, hidden=hidden)
        index, mask = batch["index"], batch["attention_mask"]
        self.stats.hits += 1
        self.stats.rows += len(index)
        device = self.live.device
        logits = None
        if self.logits is not None:
            logits = _to(self.logits[index], device)
        if self.store is None:
            return Features(logits=logits, hidden={}, qkv={})
        positions = self.offsets[index][:, None] + torch.arange(mask.shape[1])[None, :]
        positions = positions.masked_fill(mask == 0, self.pad_row)
        rows = self.store[positions.reshape(-1)]  # (b * L, features, width)
        # float32 for the losses, each feature contiguous: (features, b, L, width)
        block = _to(rows.view(*mask.shape, *rows.shape[1:]), device).float().permute(2, 0, 1, 3)
        parts = block.contiguous().unbind(0)
        n = len(self.spec.hidden)
        return Features(
            logits=logits,
            hidden=dict(zip(self.spec.hidden, parts[:n], strict=True)),
            qkv=dict(zip(self.spec.qkv, parts[n:], strict=True)),
        )

    def close(self) -> None:
        self.live.close()

    def drop(self) -> None:
        """Free the memory, and the disk, the targets took: the stage is over."""
        self.store, self.logits = None, None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path.with_suffix(".json").unlink(missing_ok=True)

    # --- a file that outlives its process -------------------------------------------------------

    def _manifest(self) -> dict[str, object]:
        if not self.stats.digest:  # the teacher by content: another teacher, another cache
            self.stats.digest = weights_digest(self.live.model)
        return {
            "key": self.key,
            "teacher": self.stats.digest,
            "shape": list(self.shape),
            "dtype": str(self.stats.plan.dtype),
            "hidden": list(self.spec.hidden),
            "qkv": [list(k) for k in self.spec.qkv],
        }

    def _complete(self) -> bool:
        assert self.path is not None
        manifest = self.path.with_suffix(".json")
        if not (manifest.is_file() and self.path.is_file()):
            return False
        try:
            return bool(json.loads(manifest.read_text()) == self._manifest())
        except ValueError:  # a torn manifest
            return False

    def _mark_complete(self) -> None:
        if self.path is None or self.store is None:
            return
        manifest = self.path.with_suffix(".json")
        manifest.write_text(json.dumps(self._manifest()))


def _allocate(shape: tuple[int, int, int], dtype: torch.dtype, path: Path | None) -> Tensor:
    """Zeros in memory, or a memory-mapped file (sparse until written; zeros where not)."""
    numel = shape[0] * shape[1] * shape[2]
    if path is None:
        return torch.zeros(shape, dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    mapped = torch.from_file(str(path), shared=True, size=numel, dtype=dtype)
    return mapped.view(shape)


def _to(x: Tensor, device: torch.device) -> Tensor:
    """To the device; through page-locked memory to a GPU, so the copy does not block."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x
