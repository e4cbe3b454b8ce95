"""Which device and numeric precision a run uses, and the autocast context for it."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch

from .errors import CnnlabWarning, UsageError

# What `precision = "auto"` means on each device type; chosen by measurement (BENCHMARKS.md).
AUTO_PRECISION = {"cuda": "bf16", "mps": "fp32"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run in hardware. Elsewhere bf16 is emulated, and slower than fp32."""
    cpu = torch.cpu
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


# The /proc/cpuinfo flags that decide how fast a CPU multiplies matrices (flops.compute_units).
MATRIX_FLAGS = {"fma", "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}


def cpu_description() -> dict:
    """What a CPU throughput figure depends on: the CPU's name and generation, its vector ISA, native bf16."""
    import platform

    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip() and info:
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    siblings, cores = int(info.get("siblings", 0) or 0), int(info.get("cpu cores", 0) or 0)
    threads_per_core = siblings // cores if siblings and cores and siblings >= cores else 1
    return {
        "name": info.get("model name", platform.processor() or platform.machine()),
        "vendor": info.get("vendor_id", ""),
        "family": info.get("cpu family"),
        "model": info.get("model"),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "flags": sorted(set(info.get("flags", "").split()) & MATRIX_FLAGS),
        "physical_cores": max(1, (os.cpu_count() or 1) // threads_per_core),
    }


# What decides which form of a recipe trains fastest (recipe_files: a recipe's [cpu.KIND] tables).
CPU_KINDS = ("amx", "avx512-bf16", "avx2", "other")


def cpu_kind(flags: set[str] | None = None) -> str:
    """This CPU's kind, or that of a CPU with these /proc/cpuinfo flags: amx (Intel's bf16 matrix tiles),
    avx512-bf16 (bf16 dot products in the vector units: Zen 4, Zen 5), avx2 (bf16 emulated, so training
    runs in float32: Zen 3), or other (no x86 flags: an ARM CPU, or no /proc/cpuinfo)."""
    flags = set(cpu_description()["flags"]) if flags is None else set(flags)
    if {"amx_bf16", "amx_tile"} <= flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    return "avx2" if "avx2" in flags else "other"


def warn_if_emulated(precision: str, device: torch.device) -> None:
    """bf16 asked for on a CPU that emulates it runs, at a fraction of fp32's speed: say so."""
    if device.type == "cpu" and precision == "bf16" and not cpu_has_native_bf16():
        warnings.warn(
            f"--precision bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}, no native bf16) is "
            "emulated: about 11x slower than fp32 on such a CPU (BENCHMARKS.md); --precision auto picks fp32 here",
            CnnlabWarning,
            stacklevel=3,
        )


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name}: this PyTorch build sees no CUDA GPU; use cpu or auto", parameters=("device",))
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"device {name}: MPS is not available here; use cpu or auto", parameters=("device",))
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps") from None


def trains_on_cpu(device: str = "auto") -> bool:
    """Whether a run with this device setting trains on the CPU: cpu, or auto where no GPU is found."""
    return device == "cpu" or (device == "auto" and resolve_device("auto").type == "cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return AUTO_PRECISION.get(device.type, "fp32")
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("precision fp16 needs a GPU; on the CPU use bf16 or fp32", parameters=("precision",))
    return precision


def autocast(device: torch.device, precision: str):
    """Mixed precision for the forward pass; fp32 runs with no autocast at all."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


_allocator_tuned = False


def tune_cpu_allocator(trim_threshold: int = 1 << 30) -> bool:
    """Stop glibc from handing large freed blocks back to the OS after every training step.

    By default glibc serves big allocations (a batch's activations are megabytes) with mmap and
    returns them on free, so each step faults every page in again: about 10,000 page faults per
    step for SmallCNN at batch 128, measured. Raising the mmap and trim thresholds keeps the memory
    in the heap for reuse (about 200 faults per step). Linux/glibc only; elsewhere a no-op. The first
    call's settings hold for the process (benchmarks/allocator.py measures other trim thresholds).
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, trim_threshold) == 1
    except (OSError, AttributeError):
        ok = False
    _allocator_tuned = ok
    return ok
