"""Muon for convolution filters: SGD whose step for a filter is the orthogonalized momentum.

Muon (Jordan et al., 2024) replaces a weight matrix's momentum by the nearest semi-orthogonal
matrix, so that every direction of the update moves by the same amount however unevenly the
gradient spreads over them; the CIFAR-10 speedruns use it for the 3x3 filters. torch.optim.Muon
takes only 2-D parameters, so filters [out, in, 3, 3] are handled here as [out, in * 9] matrices.

A filter followed by batch norm computes the same function at any scale, so Muon keeps each filter
tensor at a fixed norm (sqrt(out) as the speedruns do: rows of unit norm on average) instead of
decaying it; its rate is then an angle per step. Everything else (biases, the head) takes the
ordinary SGD step of its group: this class is torch.optim.SGD with the filter groups' gradients
replaced before SGD applies them with momentum 0.
"""

from __future__ import annotations

import math

import torch

from .device import resolve_precision

# The quintic Newton-Schulz coefficients of the Muon write-up: converge fast from any spectrum in (0, 1].
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def iteration_dtype(device: torch.device) -> torch.dtype:
    """bf16 where `precision = "auto"` trains in it (GPUs; CPUs with AVX-512 BF16 or AMX), as the Muon
    write-up does; elsewhere bf16 is emulated, 19x slower than fp32 for the speedrun network's filters
    on an AVX2 CPU (BENCHMARKS.md), so fp32."""
    return torch.bfloat16 if resolve_precision("auto", device) == "bf16" else torch.float32


def orthogonalize(matrix: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """About U V^T of matrix = U S V^T (singular values pushed near 1), by Newton-Schulz iteration
    in `dtype` (default: iteration_dtype of the matrix's device)."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.to(dtype or iteration_dtype(matrix.device))
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1: inside the iteration's basin
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(matrix.dtype)


class SGDMuon(torch.optim.SGD):
    """torch.optim.SGD in which groups with `muon_momentum` set are Muon groups (see the module docstring)."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            momentum = group.get("muon_momentum")
            if momentum is None:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                buffer = self.state[p].get("muon_buffer")
                if buffer is None:
                    buffer = self.state[p]["muon_buffer"] = torch.zeros_like(p.grad)
                buffer.mul_(momentum).add_(p.grad)
                direction = p.grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
                p.mul_(math.sqrt(p.shape[0]) / p.norm().clamp_min(1e-12))
                p.grad.copy_(orthogonalize(direction.flatten(1)).view_as(p))
        return super().step(closure)
