"""Mixed precision and memory format behind two switches: run.amp and run.channels_last (both
`auto` by default: bf16 autocast and NHWC on GPUs that have bf16 tensor cores, fp32 NCHW elsewhere).

bf16 and fp16 autocast halve activation memory and use tensor cores on GPUs; fp16 also needs
loss scaling (GradScaler) because its small gradients underflow. channels_last (NHWC) lets cuDNN
pick faster convolution kernels, mostly together with autocast. On the CPU the default stays
fp32, the references' arithmetic: bf16 autocast is faster there only on CPUs with bf16
instructions and only for large networks (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from conta.config import RunConfig
from conta.errors import ConfigError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def auto_amp(device: torch.device) -> str:
    """run.amp=auto: bf16 on CUDA GPUs with bf16 tensor cores (compute capability 8.0+: A100,
    H100, RTX 30xx on), fp32 elsewhere; the CPU keeps fp32: bf16 would change the results, and
    on the development machine's AVX512-BF16 it is no faster at the demo's sizes (2.4x for a
    ResNet-50 at 512 px)."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return "bf16"
    return "fp32"


@dataclass(frozen=True)
class Precision:
    """How one device computes: autocast dtype (None = fp32) and memory format."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def from_run(cls, run: RunConfig, device: torch.device) -> Precision:
        """run.amp and run.channels_last on `device`, `auto` resolved (see `auto_amp`)."""
        dtype = DTYPES[auto_amp(device) if run.amp == "auto" else run.amp]
        if dtype is torch.float16 and device.type != "cuda":
            raise ConfigError("run.amp: fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        channels_last = run.channels_last
        if channels_last == "auto":  # cuDNN's NHWC kernels pay off with reduced precision
            channels_last = device.type == "cuda" and dtype is not None
        return cls(device.type, dtype, channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16; a pass-through (scale() returns the loss) otherwise."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype is torch.float16)

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x
