"""Data-parallel training through PyTorch's own engine: `torchrun` starts the processes and sets
RANK, LOCAL_RANK and WORLD_SIZE; DistributedDataParallel averages the gradients.

A plain `cnnlab train` is world size 1 of the same code: `Cluster.single()` answers every question
the loop asks (which shard, which device, sum this across ranks, am I the writer) without a process
group.
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import CnnlabError, UsageError


@dataclass(frozen=True)
class Cluster:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str = ""  # nccl or gloo when distributed

    @staticmethod
    def single() -> Cluster:
        return Cluster()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, writes the run folder and the checkpoints."""
        return self.rank == 0

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over every rank (itself when alone)."""
        if self.distributed:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (a list of one when alone): what a checkpoint keeps per rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Every rank takes rank 0's buffers (batch-norm running statistics)."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def anyone(self, flag: bool) -> bool:
        """True on every rank when it is true on any: a decision all ranks must take at the same step."""
        if not self.distributed:
            return flag
        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        return bool(self.all_sum(torch.tensor([int(flag)], device=device)).item())


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def start(device_name: str) -> Cluster:
    """Join the process group torchrun prepared (nccl on CUDA, gloo on the CPU); alone, do nothing."""
    if not launched_by_torchrun():
        return Cluster.single()
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if device_name.startswith("mps"):
        raise UsageError(
            "torchrun training runs on CUDA (nccl) or the CPU (gloo), not on MPS; set device to cpu",
            parameters=("device",),
        )
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        # A rank that dies makes the others' collectives fail instead of waiting for ever.
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return Cluster(rank, local_rank, world, backend)


def stop(cluster: Cluster, finished: bool = False) -> None:
    """Leave the process group. After a finished run every rank first waits for the others (rank 0
    writes the run folder last): a rank tearing gloo down while a peer still holds its connections
    could abort at exit ("terminate called without an active exception": 5 of 20 runs of the DDP resume
    test before this barrier, 0 of 10 after)."""
    if cluster.world_size > 1 and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def is_peer_failure(error: BaseException) -> bool:
    """A collective failed because another rank went away (gloo: connection closed or reset; nccl: an
    aborted communicator), not because of a bug in this rank."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return any(s in text for s in ("connection closed", "connection reset", "broken pipe", "nccl", "gloo"))


class PeerLost(CnnlabError):
    def __init__(self, cluster: Cluster, runs_dir):
        where = (
            "; the last checkpoint is intact: continue with torchrun ... -m cnnlab train --resume RUN"
            if runs_dir
            else ""
        )
        super().__init__(
            f"rank {cluster.rank} of {cluster.world_size} lost contact with another rank (it stopped or "
            f"died), so the whole job stops{where}"
        )


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """Batch norm over the global batch on any backend: each rank's per-channel sums are all-reduced
    (differentiably, so the gradient flows through the shared statistics too). PyTorch's SyncBatchNorm
    does the same with a fused kernel, but only on GPUs; this one also runs on gloo and the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # Its autograd-aware all_reduce is marked deprecated, with no autograd-aware successor yet.
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # Two passes (the mean, then the spread around it) rather than E[x^2] - E[x]^2, which loses
            # digits where a channel's mean is large against its spread (measured: the weights of a
            # 2-process run drifted 8e-4 from a 1-process run's in three steps that way, 1.3e-4 now).
            count = torch.tensor([xf.numel() / xf.shape[1]], device=x.device)
            totals = all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), count]))
            c, n = x.shape[1], totals[-1]
            mean = totals[:c] / n
            centred = xf - mean[None, :, None, None]
            var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)  # unbiased, as BatchNorm keeps it
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def synchronize_batch_norm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BatchNorm2d computes its statistics over the global batch: PyTorch's SyncBatchNorm on CUDA,
    GlobalBatchNorm2d elsewhere. Parameters (and whether they train) and state-dict names stay."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _replace_batch_norm(model)


def _replace_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    for name, child in model.named_children():
        if isinstance(child, torch.nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm2d):
            replacement = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            if child.affine:
                replacement.weight, replacement.bias = child.weight, child.bias
            if child.track_running_stats:
                replacement.running_mean, replacement.running_var = child.running_mean, child.running_var
                replacement.num_batches_tracked = child.num_batches_tracked
            setattr(model, name, replacement)
        else:
            _replace_batch_norm(child)
    return model
