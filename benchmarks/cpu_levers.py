"""CPU levers measured and not kept (BENCHMARKS.md, issue 3), each side by side in one run:

    python benchmarks/cpu_levers.py batch DATA        # speedrun-small bare steps at batch 128, 256, 512
    python benchmarks/cpu_levers.py conv-backward     # input and weight gradients together or apart
    python benchmarks/cpu_levers.py first-conv-padding  # the 3-channel first convolution padded to 4, 8, 16
    python benchmarks/cpu_levers.py no-mmap DATA      # glibc never using mmap, against cnnlab's tuning
    python benchmarks/cpu_levers.py conv-backend      # oneDNN's convolutions or PyTorch's own, NCHW and channels-last
    python benchmarks/cpu_levers.py newton-schulz     # Muon's orthogonalization of speedrun-small's filters,
                                                      # bf16 or fp32

Repeats are interleaved so that a noisy moment slows every arm alike; medians and ranges are printed.
"""

import ctypes
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from cnnlab.device import autocast, tune_cpu_allocator


def rate(step, images: int, steps: int) -> float:
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return images * steps / (time.perf_counter() - start)


def spread(values) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def batch_sizes(repeats: int = 3) -> None:
    from cnnlab.models import build_model
    from cnnlab.optim import make_optimizer
    from cnnlab.recipe_files import load_recipe

    tune_cpu_allocator()
    recipe = load_recipe("speedrun-cpu")
    model = build_model(recipe.model, 10)
    model.initialise_from_data(torch.randn(5000, 3, 32, 32))
    model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    results = {128: [], 256: [], 512: []}
    for _ in range(repeats):
        for batch in results:
            x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (batch,))

            def step():
                with autocast(torch.device("cpu"), "bf16"):
                    loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            results[batch].append(rate(step, batch, 8192 // batch))
    for batch, values in results.items():
        print(f"speedrun-small, batch {batch}: {spread(values)} images/s")


def conv_backward(repeats: int = 5) -> None:
    """SmallCNN's convolutions in bf16 channels-last: one convolution_backward for both gradients, or two."""
    tune_cpu_allocator()
    backward = torch.ops.aten.convolution_backward
    for cin, cout, size, stride in [
        (32, 32, 32, 2),
        (32, 64, 16, 1),
        (64, 64, 16, 2),
        (64, 128, 8, 1),
        (128, 128, 8, 2),
    ]:
        x = torch.randn(128, cin, size, size, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        w = torch.randn(cout, cin, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        g = torch.randn_like(F.conv2d(x, w, stride=stride, padding=1))
        call = lambda mask: backward(g, x, w, None, [stride] * 2, [1, 1], [1, 1], False, [0, 0], 1, mask)
        together, apart = [], []
        for _ in range(repeats):
            together.append(1000 / rate(lambda: call([True, True, False]), 1, 20))  # ms per call
            apart.append(1000 / rate(lambda: (call([True, False, False]), call([False, True, False])), 1, 20))
        print(
            f"conv {cin}->{cout} at {size}x{size}, stride {stride}: together {statistics.median(together):.2f} ms, "
            f"apart {statistics.median(apart):.2f} ms (medians of {repeats})"
        )


def first_conv_padding(repeats: int = 5) -> None:
    """SmallCNN's first convolution (3 -> 32 channels at 32x32, bf16 channels-last), forward and weight
    gradient, as it is and with input and filters zero-padded to 4, 8 or 16 channels (the same maths)."""
    tune_cpu_allocator()
    x = torch.randn(128, 3, 32, 32, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 3, 3, 3, requires_grad=True)

    def step(channels: int):
        pad = (0, 0, 0, 0, 0, channels - 3)
        xx = F.pad(x, pad).contiguous(memory_format=torch.channels_last) if channels > 3 else x
        y = F.conv2d(xx, F.pad(w.to(torch.bfloat16), pad), padding=1)
        y.backward(torch.ones_like(y))

    times = {c: [] for c in (3, 4, 8, 16)}
    for _ in range(repeats):
        for channels, values in times.items():
            values.append(1000 / rate(lambda: step(channels), 1, 20))  # ms per step
    for channels, values in times.items():
        print(
            f"first conv with {channels:2d} input channels: {statistics.median(values):.2f} ms "
            f"({min(values):.2f}-{max(values):.2f}, {repeats} repeats)"
        )


def conv_backend(repeats: int = 5) -> None:
    """SmallCNN bare training steps (batch 128, the precision `auto` picks on this CPU) with the convolutions
    in oneDNN (PyTorch's default on x86) or in PyTorch's own im2col + BLAS kernels, in NCHW and channels-last."""
    from cnnlab.device import resolve_precision
    from cnnlab.models import build_model
    from cnnlab.optim import make_optimizer
    from cnnlab.recipe_files import load_recipe

    tune_cpu_allocator()
    precision = resolve_precision("auto", torch.device("cpu"))
    recipe = load_recipe("seed")
    y = torch.randint(0, 10, (128,))
    steps = {}
    for layout, memory_format in (("NCHW", torch.contiguous_format), ("channels-last", torch.channels_last)):
        model = build_model("smallcnn", 10).to(memory_format=memory_format)
        optimizer = make_optimizer(model, recipe)
        x = torch.randn(128, 3, 32, 32).contiguous(memory_format=memory_format)

        def step(model=model, optimizer=optimizer, x=x):
            with autocast(torch.device("cpu"), precision):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for backend in ("oneDNN", "native"):
            steps[(layout, backend)] = step
    results = {arm: [] for arm in steps}
    for _ in range(repeats):
        for (layout, backend), step in steps.items():
            with torch.backends.mkldnn.flags(enabled=backend == "oneDNN"):
                results[(layout, backend)].append(rate(step, 128, 10))
    for (layout, backend), values in results.items():
        print(
            f"SmallCNN {precision} {layout:13s} {backend:6s} convolutions: {spread(values)} images/s ({repeats} "
            "repeats)"
        )


def newton_schulz(repeats: int = 5) -> None:
    """One Muon step's orthogonalizations (every 3x3 filter tensor of speedrun-small, as [out, in * 9]
    matrices), iterated in bf16 or in fp32; `cnnlab.muon.iteration_dtype` says which one a run uses."""
    from cnnlab.models import build_model
    from cnnlab.muon import iteration_dtype, orthogonalize

    filters = [
        p.detach().flatten(1)
        for p in build_model("speedrun-small", 10).parameters()
        if p.dim() == 4 and p.requires_grad
    ]
    times = {torch.bfloat16: [], torch.float32: []}
    for _ in range(repeats):
        for dtype, values in times.items():
            values.append(1000 / rate(lambda: [orthogonalize(f, dtype=dtype) for f in filters], 1, 5))  # ms per step
    for dtype, values in times.items():
        print(
            f"Newton-Schulz in {str(dtype).removeprefix('torch.'):8s}: {statistics.median(values):.1f} ms per step "
            f"({min(values):.1f}-{max(values):.1f}, {repeats} repeats, {len(filters)} filter tensors)"
        )
    print(f"iteration_dtype on this CPU: {iteration_dtype(torch.device('cpu'))}")


def no_mmap(data: str, repeats: int = 2) -> None:
    results = {}
    for _ in range(repeats):
        for mode in ("tuned", "no-mmap"):
            for variant, steps in (("speedrun-cnnlab", 16), ("cnnlab", 40)):
                out = subprocess.run(
                    [sys.executable, __file__, "_measure", mode, variant, data, str(steps)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                r = json.loads(out.strip().splitlines()[-1])
                results.setdefault((variant, mode), []).append(r)
    for (variant, mode), rs in results.items():
        print(
            f"{variant:16s} {mode:8s} {spread([r['images_per_s'] for r in rs])} images/s, "
            f"page faults per step {statistics.median(r['page_faults_per_step'] for r in rs):,.0f}"
        )


def _measure(mode: str, variant: str, data: str, steps: str) -> None:
    from cnnlab.bench import VARIANTS, measure

    if mode == "no-mmap":
        ctypes.CDLL("libc.so.6").mallopt(-4, 0)  # M_MMAP_MAX = 0: every allocation from the heap
    print(json.dumps(measure(VARIANTS[variant], data, int(steps), 4, 128, 0)))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {
        "batch": lambda: batch_sizes(),
        "conv-backward": conv_backward,
        "first-conv-padding": first_conv_padding,
        "no-mmap": lambda: no_mmap(args[0]),
        "conv-backend": conv_backend,
        "newton-schulz": newton_schulz,
        "_measure": lambda: _measure(*args),
    }[command]()
