"""Test-set evaluation time against the evaluation batch size, per model and precision (BENCHMARKS.md,
"A Zen 5 CPU"): why the seed recipe evaluates in batches of 250.

    python benchmarks/eval_batch.py ../shared/data/cifar10-jpeg.tar.gz [--repeats 3]

Untrained models: the time of a forward pass does not depend on the weights. Medians of interleaved
repeats over the 10,000 test images.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cnnlab.data import load_dataset
from cnnlab.device import autocast, cpu_description, tune_cpu_allocator
from cnnlab.evaluate import evaluate
from cnnlab.loader import Loader, Normalizer
from cnnlab.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="1000,500,250,128")
    parser.add_argument("--models", default="smallcnn,speedrun-small")
    args = parser.parse_args()
    tune_cpu_allocator()
    data = load_dataset(args.data, progress=False)
    normalize = Normalizer((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    cpu = torch.device("cpu")
    print(
        f"cpu: {cpu_description()['name']}; seconds per evaluation of {len(data.test_labels)} images, "
        f"median of {args.repeats} (min-max)"
    )
    for name in args.models.split(","):
        model = build_model(name, data.num_classes).to(memory_format=torch.channels_last).eval()
        for precision in ("bf16", "fp32"):
            times = {int(b): [] for b in args.sizes.split(",")}
            for _ in range(args.repeats):
                for size in times:
                    loader = Loader(data.test_images, data.test_labels, size, normalize, device=cpu, channels_last=True)
                    start = time.perf_counter()
                    with autocast(cpu, precision):
                        evaluate(model, loader)
                    times[size].append(time.perf_counter() - start)
            cells = "  ".join(
                f"batch {b}: {statistics.median(t):.2f} s ({min(t):.2f}-{max(t):.2f})" for b, t in times.items()
            )
            print(f"{name:<15} {precision}  {cells}")


if __name__ == "__main__":
    main()
