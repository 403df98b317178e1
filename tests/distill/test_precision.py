import torch

from contract.config import DistillConfig
from workers.distill.precision import autocast_for, cpu_has_native_bf16, use_bf16

CPU = torch.device("cpu")


def _config(mode: str, legacy: bool = True) -> DistillConfig:
    return DistillConfig.model_validate({"hyperparameters": {"bf16": mode}, "bf16": legacy})


def test_bf16_follows_the_setting_and_the_cpu() -> None:
    assert use_bf16(_config("on"), CPU) is True
    assert use_bf16(_config("off"), CPU) is False
    assert use_bf16(_config("auto"), CPU) is cpu_has_native_bf16()
    assert use_bf16(_config("on", legacy=False), CPU) is False  # the old switch still means fp32
    assert DistillConfig().hyperparameters.bf16 == "auto"


def test_autocast_computes_in_bf16_and_keeps_fp32_weights() -> None:
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with autocast_for(CPU, bf16=True):
        assert layer(x).dtype == torch.bfloat16
    with autocast_for(CPU, bf16=False):
        assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32
