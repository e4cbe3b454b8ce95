"""The speedrun network, after the CIFAR-10 speedrun literature (hlb-cifar10, airbench; Jordan 2024).

A frozen patch-whitening convolution and a GELU, then three stages of (conv, max-pool, BN, GELU, conv, BN, GELU),
a 3x3 max-pool and a linear head whose logits are scaled down. Batch norm keeps its scale frozen at 1
(only the shift learns, at a higher rate: the recipe's `bias_lr_scale`), and every 3x3 convolution
starts as the identity on its first input channels, so the untrained network passes the whitened
image through.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WHITEN_KERNEL = 2  # 2x2 patches: 12 dimensions, each eigenvector used with both signs -> 24 channels
WHITEN_EPS = 5e-4  # added to the eigenvalues: keeps the near-zero directions from exploding


class _MaxPool2x2(torch.autograd.Function):
    """A 2x2 max-pool whose backward pass keeps only where each window's maximum was, as int16.

    PyTorch's own pool saves its whole input for the backward pass (it reads only the input's shape) and the
    positions as int64. The 2x2 windows do not overlap, so each input element is the maximum of at most one
    window, and scattering the output's gradient to those positions (max_unpool2d) is the gradient, bit for bit.
    A position within one plane (at most 31x31 here) fits 16 bits."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, positions = F.max_pool2d(x, 2, return_indices=True)
        ctx.save_for_backward(positions.to(torch.int16))
        ctx.plane = tuple(x.shape[-2:])
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (positions,) = ctx.saved_tensors
        return F.max_unpool2d(grad_out, positions.to(torch.int64), 2, output_size=ctx.plane)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 2), keeping for the backward pass int16 positions only, not the input and int64 positions.

    At batch 1024 the 64/256/256 network's three pools saved 270 MB of inputs in bf16 (539 MB in fp32) and
    242 MB of int64 positions per step; now 60 MB (BENCHMARKS.md). Compiled graphs and inference take PyTorch's
    pool (inductor keeps small offsets already), as do exports (a traced graph has no Python function in it) and a
    plane too large for 16-bit positions."""
    plain = torch.compiler.is_compiling() or torch.jit.is_tracing() or not torch.is_grad_enabled()
    if plain or x.shape[-2] * x.shape[-1] > 2**15:
        return F.max_pool2d(x, 2)
    return _MaxPool2x2.apply(x)


class _ShiftOnlyBatchNorm(torch.autograd.Function):
    """Training-mode batch norm with its scale fixed at 1, which keeps its output for the backward pass, not its input.

    With the scale at 1 the output is y = (x - mean) * invstd + shift, so the normalised input x_hat that the
    backward pass needs is y - shift, and the input x is not needed at all. The GELU after the batch norm keeps y
    anyway, so the batch norm adds nothing of its own, and the convolution or pool output it used to keep is freed
    as soon as the forward pass moves on (the idea of in-place activated batch norm; Rota Bulo et al., 2018).

    PyTorch's backward kernel reads its input as x_hat = (input - save_mean) * save_invstd and multiplies the
    input's gradient by weight * save_invstd. Handing it y, the shift and 1 in those places, and the true invstd as
    the weight, gives the batch norm's gradient from the same kernel with the same passes over memory: no
    recomputation. Only rounding differs (x_hat comes from the rounded y, not from x)."""

    @staticmethod
    def forward(ctx, x, shift, running_mean, running_var, momentum: float, eps: float):
        y, _, invstd = torch.native_batch_norm(x, None, shift, running_mean, running_var, True, momentum, eps)
        ctx.save_for_backward(y, shift, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, shift, invstd = ctx.saved_tensors
        needed = [ctx.needs_input_grad[0], False, ctx.needs_input_grad[1]]  # (input, scale, shift)
        grad_x, _, grad_shift = torch.ops.aten.native_batch_norm_backward(
            grad_y, y, invstd, None, None, shift, torch.ones_like(invstd), True, ctx.eps, needed
        )
        return grad_x, grad_shift, None, None, None, None


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """Batch norm whose scale stays 1: the next convolution can absorb any scale, so only the shift trains.
    A high momentum (0.4 in PyTorch's convention) makes the running statistics follow a short run.

    In training it keeps its output, not its input, for the backward pass (_ShiftOnlyBatchNorm): at batch 1024
    the 64/256/256 network's six batch norms kept 239 MB in fp32 (120 MB in bf16) that nothing else needed
    (BENCHMARKS.md). Compiled graphs, traced exports and evaluation take PyTorch's batch norm."""

    saves_output = True  # benchmarks/pool_indices.py turns it off to measure PyTorch's batch norm beside it

    def __init__(self, channels: int, momentum: float = 0.4):
        super().__init__(channels, momentum=momentum, eps=1e-12)
        self.weight.requires_grad_(False)

    def forward(self, x):
        plain = torch.compiler.is_compiling() or torch.jit.is_tracing() or not torch.is_grad_enabled()
        if plain or not self.training or not self.saves_output or self.weight.requires_grad:
            return super().forward(x)
        self.num_batches_tracked.add_(1)  # as nn.BatchNorm2d counts them (the momentum is fixed, so unused)
        return _ShiftOnlyBatchNorm.apply(x, self.bias, self.running_mean, self.running_var, self.momentum, self.eps)


class ConvStage(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.norm1 = FrozenScaleBatchNorm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = FrozenScaleBatchNorm(out_ch)

    def forward(self, x):
        x = max_pool_2x2(self.conv1(x))
        x = F.gelu(self.norm1(x))
        return F.gelu(self.norm2(self.conv2(x)))


class SpeedrunNet(nn.Module):
    """3x32x32 -> whiten, GELU 24x31x31 -> w1x15x15 -> w2x7x7 -> w3x3x3 -> max -> linear / 9."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (64, 256, 256),
        whiten: bool = True,
        identity_init: bool = True,
        whiten_gelu: bool = True,
        logit_scale: float = 1 / 9,
    ):
        super().__init__()
        whiten_channels = 2 * 3 * WHITEN_KERNEL**2
        self.whiten = nn.Conv2d(3, whiten_channels, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten_from_data = whiten
        # Each filter comes with its negation: after a GELU the pair keeps both halves of the projection (as a
        # CReLU does); without it the pair is one linear feature twice, and the network sees 12 inputs, not 24.
        self.whiten_activation = nn.GELU() if whiten_gelu else nn.Identity()
        if whiten:  # set from the data by `initialise_from_data`, then frozen (its bias still trains)
            self.whiten.weight.requires_grad_(False)
        stages, in_ch = [], whiten_channels
        for width in widths:
            stages.append(ConvStage(in_ch, width))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_ch, num_classes, bias=False)
        self.logit_scale = logit_scale
        if identity_init:
            for m in self.stages.modules():
                if isinstance(m, nn.Conv2d):
                    # Identity on the first in_ch output channels; the rest keep their random start.
                    n = min(m.in_channels, m.out_channels)
                    nn.init.dirac_(m.weight.data[:n])

    @torch.no_grad()
    def initialise_from_data(self, images: torch.Tensor) -> None:
        """Whitening filters from the covariance of the 2x2 patches of normalised training images [N, 3, H, W]:
        each filter projects a patch on one eigenvector, divided by the square root of its eigenvalue."""
        if not self.whiten_from_data:
            return
        x = images.float()
        patches = x.unfold(2, WHITEN_KERNEL, 1).unfold(3, WHITEN_KERNEL, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * WHITEN_KERNEL**2)
        patches = patches - patches.mean(dim=0)
        covariance = (patches.T @ patches / len(patches)).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + WHITEN_EPS)[:, None]).float()
        filters = filters.view(-1, 3, WHITEN_KERNEL, WHITEN_KERNEL)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def stage_sequence(self) -> nn.Sequential:
        return self.stages  # the frozen whitening layer runs before them

    def whitening_bias(self) -> nn.Parameter:
        """The one parameter of the whitening layer that trains (a recipe may stop it: whiten_bias_epochs)."""
        return self.whiten.bias

    def forward(self, x):
        x = self.stages(self.whiten_activation(self.whiten(x)))
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.head(x) * self.logit_scale
