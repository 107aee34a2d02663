"""Where and in which precision models run: one device resolver and one autocast for the
encoders, embedding and MIL training (torch; imported only where models run)."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from histstore.errors import InvalidInput


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu. A CUDA device asked for on a machine without
    CUDA, or a name torch does not know, raises InvalidInput (before any work starts)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InvalidInput(f"unknown device {device!r}: auto, cpu or cuda[:N]") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"device {device!r} asked for but CUDA is not available",
                           hint="use --device cpu")
    return dev


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `amp` on `device` (None = full fp32).

    auto: CUDA -> bf16 if supported else fp16; CPU -> bf16 only when the CPU has native bf16
    arithmetic (AVX512-BF16 / AMX), where it speeds ResNet convolutions up; else fp32.
    """
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise InvalidInput("fp16 autocast needs a CUDA device; use amp=bf16 or off on CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_bf16():
        return torch.bfloat16
    return None


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device_type: str, amp_dtype: torch.dtype | None):
    """torch.autocast when amp_dtype is given, else a no-op context."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=amp_dtype)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on `device`: CUDA's free memory on that GPU, or the
    system's MemAvailable for the CPU (Linux); None when it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
