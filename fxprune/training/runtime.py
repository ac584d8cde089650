"""Where and how the training loops run: the device, autocast's dtype and the memory format.

The defaults suit the machine: CUDA where there is one, bf16 autocast on it (fp16 with a GradScaler
where bf16 is missing), channels-last there; on the CPU float32 and the default layout, so CPU runs
stay deterministic. Parameters and optimiser state stay float32 under autocast. Models are moved by
copies the loops own; a user's model never changes device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from fxprune.analysis.importance import split_batch

AMPS = ("off", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: str = "off"
    channels_last: bool = False

    @classmethod
    def resolve(cls, device: str | torch.device = "auto", amp: str = "auto", channels_last: bool | None = None,
                *, flags: bool = False) -> Runtime:
        """`device` auto|cpu|cuda|cuda:N (auto: CUDA where available), `amp` auto|off|bf16|fp16,
        `channels_last` None for the device's default. `flags`: name the bad value as a CLI option."""
        name = (lambda option, v: f"--{option.replace('_', '-')} {v}") if flags else (lambda option, v: f"{option}={v!r}")
        text = str(device)
        if text == "auto":
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            try:
                dev = torch.device(text)
            except (RuntimeError, ValueError):
                raise ValueError(f"{name('device', text)}: write auto, cpu, cuda or cuda:N") from None
            if dev.type not in ("cpu", "cuda"):
                raise ValueError(f"{name('device', text)}: write auto, cpu, cuda or cuda:N")
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"{name('device', text)}: this machine has no CUDA device torch can use "
                                 "(torch.cuda.is_available() is False); use cpu or auto")
            if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
                raise ValueError(f"{name('device', text)}: this machine has {torch.cuda.device_count()} CUDA "
                                 f"device(s), numbered from 0")
        if amp not in AMPS + ("auto",):
            raise ValueError(f"{name('amp', amp)}: write auto, off, bf16 or fp16")
        if amp == "auto":
            amp = "off" if dev.type == "cpu" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if amp == "fp16" and dev.type == "cpu":
            raise ValueError(f"{name('amp', amp)}: fp16 autocast is for CUDA; on the CPU use bf16 or off")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return cls(dev, amp, dev.type == "cuda" if channels_last is None else channels_last)

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)

    def text(self) -> str:
        return (f"{self.device}, amp {self.amp}" + (", channels-last" if self.channels_last else ""))

    def model(self, module: nn.Module) -> nn.Module:
        """`module` (a copy the loops own) moved to the device, in the memory format."""
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) on the device (asynchronously from pinned memory)."""
        x, y = split_batch(batch)
        blocking = self.device.type == "cpu"
        x = x.to(self.device, non_blocking=not blocking)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=not blocking)

    def inputs(self, inputs: tuple) -> tuple:
        """Example inputs on the device (tensors moved, other values as they are)."""
        return tuple(x.to(self.device) if isinstance(x, torch.Tensor) else x for x in inputs)

    def batches(self, data) -> list:
        """Every batch of `data` on the device (the few importance batches a pruning step ranks on)."""
        return [self.batch(b) for b in data]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A GradScaler for fp16 (small gradients would underflow); a pass-through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")



def as_runtime(device: str | torch.device | Runtime) -> Runtime:
    """A Runtime as given, or resolved from a device name with its default autocast and memory format."""
    return device if isinstance(device, Runtime) else Runtime.resolve(device)
