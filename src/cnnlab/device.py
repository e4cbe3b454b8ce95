"""Which device and numeric precision a run uses, and the autocast context for it."""

from __future__ import annotations

import contextlib

import torch

from .errors import UsageError

# What `precision = "auto"` means on each device type; chosen by measurement (BENCHMARKS.md).
AUTO_PRECISION = {"cuda": "bf16", "cpu": "fp32", "mps": "fp32"}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this PyTorch build sees no CUDA GPU; use --device cpu or auto")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps") from None


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return AUTO_PRECISION.get(device.type, "fp32")
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16 needs a GPU; on the CPU use bf16 or fp32")
    return precision


def autocast(device: torch.device, precision: str):
    """Mixed precision for the forward pass; fp32 runs with no autocast at all."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
