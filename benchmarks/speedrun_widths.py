"""Bare training-step throughput of the speedrun network at several widths and input sizes on this
machine (random batch of 512, channels-last, Nesterov SGD, in the precision `auto` picks here or the one
named): why `speedrun-cpu` uses 32/128/128, what the wider `speedrun-cpu90` network costs, what early crops
save per step, and what the GELU after the whitening layer costs (`--whiten-gelu on off`).

    python benchmarks/speedrun_widths.py [--widths 64-256-256 48-192-192 32-128-128] [--sizes 32 24]
        [--whiten-gelu on off] [--repeats 3] [--precision auto|fp32|bf16]

Every (widths, size, GELU) combination is timed once per repeat, interleaved, so a noisy moment slows
all of them alike; the median and range over the repeats are printed.
"""

import argparse

import torch
import torch.nn.functional as F
from cpu_levers import rate, spread  # benchmarks/cpu_levers.py: warm-up then timed steps; median (min-max)

from cnnlab.device import autocast, cpu_description, resolve_precision, tune_cpu_allocator
from cnnlab.models.speedrun import SpeedrunNet


def images_per_second(
    widths: tuple[int, int, int], size: int, whiten_gelu: bool, batch: int, steps: int, precision: str
) -> float:
    torch.manual_seed(0)
    model = SpeedrunNet(10, widths, whiten_gelu=whiten_gelu).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, nesterov=True, foreach=True
    )
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step():
        with autocast(torch.device("cpu"), precision):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return rate(step, batch, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", default=["64-256-256", "48-192-192", "32-160-160", "32-128-128"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32])
    parser.add_argument("--whiten-gelu", nargs="+", choices=("on", "off"), default=["on"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    args = parser.parse_args()
    tune_cpu_allocator()
    # auto is what training picks: bf16 where the CPU has it natively, else fp32 (emulated bf16 is ~11x slower)
    precision = resolve_precision(args.precision, torch.device("cpu"))
    cpu = cpu_description()
    combinations = [
        (tuple(int(w) for w in spec.split("-")), size, gelu == "on")
        for spec in args.widths
        for size in args.sizes
        for gelu in args.whiten_gelu
    ]
    results = {combination: [] for combination in combinations}
    for _ in range(args.repeats):
        for combination in combinations:
            results[combination].append(images_per_second(*combination, args.batch, args.steps, precision))
    print(f"CPU: {cpu['name']} (family {cpu['family']}, model {cpu['model']}, {cpu['isa']}); precision {precision}")
    print("widths | input | GELU after whitening | images/s, median (min-max)")
    for (widths, size, gelu), rates in results.items():
        print(f"{'/'.join(map(str, widths))} | {size}x{size} | {'on' if gelu else 'off'} | {spread(rates)}")


if __name__ == "__main__":
    main()
