"""How much work a training step is, and how much a CPU can do: the figures behind the bench's "of peak"."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def forward_macs(model: torch.nn.Module, image_size: int = 32) -> int:
    """Multiply-adds of one image's forward pass through the conv and linear layers."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output[0].numel() * k
        elif isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features

    handles = [
        m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    for h in handles:
        h.remove()
    return total


# The peak we compare against, unit by unit, and where each figure comes from. A VM does not show its clock:
# we assume 3.0 GHz, and percentages scale inversely with the true clock. SMT siblings share a core's units,
# so the peak counts physical cores.
ASSUMED_GHZ = 3.0


@dataclass(frozen=True)
class Unit:
    name: str
    precision: str  # the inputs it multiplies: fp32 or bf16
    flop_per_cycle_per_core: int  # a multiply-add counted as 2 FLOP
    source: str


FMA_256 = Unit("FMA (2 x 256-bit)", "fp32", 32, "two 8-wide FMAs per cycle: Zen 2-4 and Intel since Haswell "
               "(Agner Fog's instruction tables); Zen 4 also runs AVX-512 on these two pipes")  # fmt: skip
FMA_512 = Unit("FMA (2 x 512-bit)", "fp32", 64, "two 16-wide FMAs per cycle: Xeon Scalable with two AVX-512 "
               "FMA units (Intel optimization manual), Zen 5 server cores' full 512-bit datapath (AMD)")  # fmt: skip
AMX_BF16 = Unit("AMX tiles", "bf16", 1024, "Intel: 1,024 bf16 operations per cycle per core (4th-gen Xeon); "
                "TDPBF16PS multiplies 16x32 by 32x16 tiles, 8,192 multiply-adds, in 16 cycles")  # fmt: skip


def compute_units(flags: set[str], vendor: str = "", family: int | None = None) -> list[Unit]:
    """The units a CPU multiplies matrices with, from its /proc/cpuinfo flags (and, for AVX-512's width,
    its vendor and family: Zen 4, family 25, splits 512-bit work over 256-bit pipes)."""
    if "avx512f" in flags and not (vendor == "AuthenticAMD" and (family or 0) < 26):
        fma = FMA_512
    elif "fma" in flags:
        fma = FMA_256
    else:
        fma = Unit("SSE/AVX without FMA", "fp32", 16, "an 8-wide add and an 8-wide multiply per cycle (AVX)")
    units = [fma]
    if "avx512_bf16" in flags:  # VDPBF16PS: two bf16 multiply-adds per fp32 lane, on the FMA pipes
        units.append(Unit("AVX-512 BF16", "bf16", 2 * fma.flop_per_cycle_per_core, f"VDPBF16PS on the {fma.name} "
                          "pipes: two bf16 multiply-adds per fp32 lane (Intel ISA reference)"))  # fmt: skip
    if {"amx_bf16", "amx_tile"} <= flags:
        units.append(AMX_BF16)
    return units


def peak_unit(units: list[Unit], precision: str) -> Unit:
    """The fastest unit for `precision`. Without a bf16 unit oneDNN converts bf16 to fp32 and computes there."""
    fitting = [u for u in units if u.precision == precision] or [u for u in units if u.precision == "fp32"]
    return max(fitting, key=lambda u: u.flop_per_cycle_per_core)


def peak_flops(unit: Unit, physical_cores: int) -> float:
    return unit.flop_per_cycle_per_core * physical_cores * ASSUMED_GHZ * 1e9


# Where a step's time goes: aten operators grouped by family, by torch.profiler's self CPU time (the
# autograd and optimizer wrappers would double-count their children, so only aten:: events count).
# The activation family holds the speedrun network's GELUs as well as SmallCNN's ReLUs (ReLU's backward
# is aten::threshold_backward); pooling is its own family because the speedrun network pools every stage.
OPERATOR_FAMILIES = {
    "convolution": ("convolution",),
    "batch norm": ("batch_norm",),
    "activation": ("threshold", "clamp_min", "relu", "gelu"),
    "pooling": ("max_pool", "avg_pool"),
}


def operator_shares(profiler) -> dict[str, float]:
    """{family: share of the profiled self CPU time}, with "everything else" for the rest; they sum to 1."""
    events = [e for e in profiler.key_averages() if e.key.startswith("aten::")]
    shares = {name: 0.0 for name in [*OPERATOR_FAMILIES, "everything else"]}
    for e in events:
        family = next((f for f, keys in OPERATOR_FAMILIES.items() if any(k in e.key for k in keys)), None)
        shares[family or "everything else"] += e.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {name: t / total for name, t in shares.items()}
