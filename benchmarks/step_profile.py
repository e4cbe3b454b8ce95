"""Where a training step's time goes: SmallCNN, batch 128, channels-last, the training precision
(`--precision`, default what `auto` picks on this CPU: bf16 autocast with native bf16, else fp32),
Nesterov-free SGD as in the seed recipe, tuned allocator; operators grouped into convolution, batch
norm, activation (ReLU), pooling and the rest by torch.profiler's self CPU time. Why 4x the chapter's
path is out of reach on these CPUs: the convolutions alone bound the step.

    python benchmarks/step_profile.py [--steps 20] [--by-shape] [--precision auto|fp32|bf16]

--by-shape adds the batch-norm and activation time per activation shape: the first block's 32x32x32
activations are 8 MB per batch in bf16, too big to stay in this machine's caches between operators.
"""

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import profile

from cnnlab.device import autocast, resolve_precision, tune_cpu_allocator
from cnnlab.flops import OPERATOR_FAMILIES as GROUPS
from cnnlab.flops import operator_shares
from cnnlab.models import build_model
from cnnlab.optim import make_optimizer
from cnnlab.recipe_files import load_recipe


def main(steps: int, by_shape: bool, precision: str) -> None:
    precision = resolve_precision(precision, torch.device("cpu"))
    tune_cpu_allocator()
    torch.manual_seed(0)
    recipe = load_recipe("seed")
    model = build_model(recipe.model, 10).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))

    def step():
        with autocast(torch.device("cpu"), precision):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(10):  # warm-up: oneDNN primitive caches, allocator
        step()
    with profile(record_shapes=by_shape) as prof:
        for _ in range(steps):
            step()
    total = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::"))
    shares = {name: share * total for name, share in operator_shares(prof).items()}
    print(
        f"{precision}: {total / steps / 1000:.1f} ms per step ({128 * steps / (total / 1e6):,.0f} images/s on "
        "the operators alone)"
    )
    for name, t in shares.items():
        print(f"  {name:16s} {100 * t / total:5.1f}%  {t / steps / 1000:5.1f} ms")
    if by_shape:
        print("batch norm and activation, forward and backward, by activation shape:")
        per_shape: dict[tuple, float] = {}
        for e in prof.key_averages(group_by_input_shape=True):
            if e.key.startswith("aten::") and any(k in e.key for k in GROUPS["batch norm"] + GROUPS["activation"]):
                shape = tuple(e.input_shapes[0]) if e.input_shapes and e.input_shapes[0] else ()
                per_shape[shape] = per_shape.get(shape, 0.0) + e.self_cpu_time_total
        for shape, t in sorted(per_shape.items(), key=lambda item: -item[1]):
            elements = torch.Size(shape).numel() if shape else 0
            print(
                f"  {str(list(shape)):22s} {t / steps / 1000:5.2f} ms  "
                f"{t / steps / max(elements, 1) * 1e3:6.2f} ns per element"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--by-shape", action="store_true", help="batch norm and ReLU time per activation shape")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()
    main(args.steps, args.by_shape, args.precision)
