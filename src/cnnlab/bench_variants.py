"""The variants `cnnlab bench` times, as data: a name, a description, the recipe and its overrides,
which loader and loop, and the process-wide settings. `cnnlab bench --list` prints them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """A training configuration to time: a recipe with overrides, exactly as `cnnlab train` would run it
    (prepare.py builds both), plus the process settings that are not recipe fields."""

    name: str
    description: str
    recipe: str = "seed"  # whose model, optimizer, augmentation and batch size
    overrides: tuple = ()  # (field, value) pairs on top of the recipe
    loader: str = "memory"  # memory: cnnlab's loader; dataloader: the chapter's per-sample path
    tune_allocator: bool = True
    threads: int | None = None  # None: PyTorch's default (one per core)
    loop: str = "cnnlab"  # cnnlab: train_one_epoch; minimal: a hand-written loop doing the same maths


FP32, NCHW = ("precision", "fp32"), ("channels_last", False)
VARIANTS = {
    v.name: v
    for v in [
        Variant(
            "seed-literal",
            "chapter's data path: per-image PIL crop/flip, DataLoader(2 workers), NCHW fp32",
            overrides=(FP32, NCHW),
            loader="dataloader",
            tune_allocator=False,
        ),
        Variant(
            "cnnlab-nchw-fp32",
            "in-memory batched loader, NCHW fp32, default allocator",
            overrides=(FP32, NCHW),
            tune_allocator=False,
        ),
        Variant("cnnlab-cl-fp32", "+ channels-last", overrides=(FP32,), tune_allocator=False),
        Variant("cnnlab-cl-fp32-alloc", "+ allocator keeps freed memory (no page faults per step)", overrides=(FP32,)),
        Variant(
            "cnnlab-cl-bf16",
            "channels-last, bf16 autocast, default allocator",
            overrides=(("precision", "bf16"),),
            tune_allocator=False,
        ),
        Variant(
            "cnnlab",
            "cnnlab's default CPU path: channels-last, tuned allocator, precision auto "
            "(bf16 autocast where the CPU has native bf16, else fp32)",
        ),
        Variant(
            "cnnlab-compile",
            "cnnlab + torch.compile (inductor fuses batch norm, ReLU and pooling)",
            overrides=(("compile", "default"),),
        ),
        Variant(
            "cnnlab-compile-max",
            "cnnlab + torch.compile max-autotune (inductor also times its own GEMM and convolution templates)",
            overrides=(("compile", "max-autotune"),),
        ),
        # The speedrun recipe through cnnlab's general loop against the few lines a speedrun script would write.
        Variant(
            "speedrun-minimal",
            "speedrun-cpu recipe, a hand-written loop: rate, forward, backward, step, lookahead",
            recipe="speedrun-cpu",
            loop="minimal",
        ),
        Variant(
            "speedrun-cnnlab",
            "speedrun-cpu recipe through cnnlab's train_one_epoch (metrics, checks, resume state)",
            recipe="speedrun-cpu",
        ),
        Variant(
            "speedrun-compile",
            "speedrun-cpu recipe through train_one_epoch, torch.compile'd forward",
            recipe="speedrun-cpu",
            overrides=(("compile", "default"),),
        ),
    ]
}
DEFAULT_VARIANTS = [
    "seed-literal",
    "cnnlab-nchw-fp32",
    "cnnlab-cl-fp32",
    "cnnlab-cl-fp32-alloc",
    "cnnlab-cl-bf16",
    "cnnlab",
]
