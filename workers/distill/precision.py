"""Which precision a run computes in: bf16 autocast where the hardware multiplies bf16 natively,
float32 elsewhere. Master weights, optimizer state and losses stay float32 either way."""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from contract.config import DistillConfig

# /proc/cpuinfo flags of CPUs that multiply bf16 in hardware: Intel AMX tiles (Sapphire Rapids
# on) and AVX512-BF16 dot products (Cooper Lake, AMD Zen 4 on). Without them torch emulates
# bf16 through float32 and autocast only adds casts.
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def use_bf16(config: DistillConfig, device: torch.device) -> bool:
    """hyperparameters.bf16 resolved for this device; the legacy `bf16: false` forces float32."""
    mode = config.hyperparameters.bf16
    if not config.bf16 or mode == "off":
        return False
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return mode == "on" or cpu_has_native_bf16()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16 on this CPU (Linux reads the flags; elsewhere torch's AMX probe)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return not NATIVE_BF16_FLAGS.isdisjoint(line.split(":", 1)[1].split())
    return bool(torch._C._cpu._init_amx())


def autocast_for(device: torch.device, *, bf16: bool) -> AbstractContextManager[object]:
    """bf16 autocast on `device` when asked; plain float32 otherwise."""
    if not bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
