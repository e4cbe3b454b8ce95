"""How much work a training step is, and how much a CPU can do: the figures behind the bench's "of peak"."""

from __future__ import annotations

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


# The peak we compare against, and why. AMD Zen 2-4 and Intel cores since Haswell retire two 256-bit
# FMAs per cycle (Zen 4 runs AVX-512 on the same two pipes): 16 fp32 FMAs = 32 FLOP per cycle per core.
# Native bf16 dot products (AVX-512 BF16's VDPBF16PS, or AMX) do twice that; without them oneDNN
# converts bf16 to fp32 and computes there, so bf16's peak is fp32's. A VM does not show its clock:
# we assume 3.0 GHz, and percentages scale inversely with the true clock.
ASSUMED_GHZ = 3.0
FP32_FLOP_PER_CYCLE_PER_CORE = 32


def peak_flops(precision: str, cores: int, native_bf16: bool) -> float:
    per_cycle = FP32_FLOP_PER_CYCLE_PER_CORE * (2 if precision == "bf16" and native_bf16 else 1)
    return per_cycle * cores * ASSUMED_GHZ * 1e9
