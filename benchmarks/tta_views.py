"""The TTA view sets of `evaluate.TTA_VIEWS` on a trained run: seconds and test accuracy of each, and
each set's accuracy difference from the 10 shifts on the same images, with a paired bootstrap interval.
The evidence behind `tta_views = "diagonals"` in the speedrun recipes.

A row scores the diagonals in airbench94's order, each shifted image then mirrored, against
cnnlab's, the mirrored image then shifted: the mirrored views then lie on the other diagonal. A last
row times them as training takes them, the image as it is from the logits of a float32 plain pass made
beforehand (untimed: training makes it anyway, for the last epoch's row), one pass fewer, against all
6 views, the two interleaved over --repeats.

    python benchmarks/tta_views.py DATA RUN [--precision bf16] [--batch-size N] [--repeats R]

Each set runs once (the last two rows R times), with the run's last weights, in batches of N (default: the
run's eval_batch_size).
"""

import argparse
import statistics
import time

import torch

from cnnlab.data import load_dataset
from cnnlab.device import autocast, cpu_description, tune_cpu_allocator
from cnnlab.evaluate import TTA_VIEWS, evaluate, shift
from cnnlab.loader import Loader
from cnnlab.openrun import load_run


def paired_interval(difference: torch.Tensor, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the mean of per-image differences (in points), images resampled together."""
    generator = torch.Generator().manual_seed(seed)
    n = len(difference)
    means = sorted(float(difference[torch.randint(0, n, (n,), generator=generator)].mean()) for _ in range(draws))
    return 100 * means[int(0.025 * draws)], 100 * means[int(0.975 * draws) - 1]


@torch.no_grad()
def airbench_order_right(model: torch.nn.Module, loader: Loader) -> torch.Tensor:
    """1.0 per test image the diagonals get right when each shifted view is mirrored (airbench94's
    infer_mirror of each translation), where cnnlab mirrors first and then shifts."""
    model.eval()
    right = []
    for x, y in loader:
        total = 0.0
        for (dy, dx), weight in TTA_VIEWS["diagonals"]:
            view = shift(x, dy, dx)
            total = total + weight * (model(view).float() + model(view.flip(-1)).float())
        right.append((total.argmax(dim=1) == y).double())
    return torch.cat(right)


def main(data_source: str, run_path: str, precision: str, batch_size: int | None, repeats: int) -> None:
    tune_cpu_allocator()
    data = load_dataset(data_source, progress=False)
    run = load_run(run_path, weights="last")
    run.dataset(data)  # the classes must fit
    cpu = torch.device("cpu")
    model = run.model.to(memory_format=torch.channels_last)
    batch = batch_size or run.checkpoint["recipe"]["eval_batch_size"]
    loader = Loader(data.test_images, data.test_labels, batch, run.normalizer, device=cpu, channels_last=True)
    print(f"cpu: {cpu_description()['name']}; run {run_path}, {precision}, evaluation batch {batch}")
    print("views | seconds (once) | test acc | vs shifts, points (paired bootstrap 95%)")
    right, plain_fp32 = {}, evaluate(model, loader)
    with autocast(cpu, precision):
        plain = evaluate(model, loader)
        print(f"none (1 view) | - | {plain['acc']:.2f}% | -")
        for name, views in TTA_VIEWS.items():
            start = time.perf_counter()
            result = evaluate(model, loader, tta=True, views=name)
            seconds = time.perf_counter() - start
            right[name] = (result["predictions"] == result["labels"]).double()
            gap = right[name] - right["shifts"]
            low, high = paired_interval(gap)
            print(
                f"{name} ({2 * len(views)} views) | {seconds:.1f} | {result['acc']:.2f}% | "
                f"{100 * float(gap.mean()):+.2f} ({low:+.2f} to {high:+.2f})",
                flush=True,
            )
        start = time.perf_counter()
        airbench = airbench_order_right(model, loader)
        seconds = time.perf_counter() - start
        gap = airbench - right["diagonals"]
        low, high = paired_interval(gap)
        print(
            f"diagonals, mirrored after the shift (airbench's order) | {seconds:.1f} | "
            f"{100 * float(airbench.mean()):.2f}% | vs cnnlab's diagonals "
            f"{100 * float(gap.mean()):+.2f} ({low:+.2f} to {high:+.2f})"
        )
    seconds = {"all 6 views": [], "the image as it is reused": []}
    for _ in range(repeats):  # interleaved, so a noisy moment slows both alike
        for arm in seconds:
            start = time.perf_counter()
            with autocast(cpu, precision):
                given = plain_fp32 if arm == "the image as it is reused" else None
                result = evaluate(model, loader, tta=True, views="diagonals", plain=given)
            seconds[arm].append(time.perf_counter() - start)
            right[arm] = (result["predictions"] == result["labels"]).double()
    for arm, times in seconds.items():
        gap = right[arm] - right["diagonals"]
        low, high = paired_interval(gap)
        print(
            f"diagonals, {arm} | {statistics.median(times):.1f} ({min(times):.1f}-{max(times):.1f}, median of "
            f"{repeats}) | {100 * float(right[arm].mean()):.2f}% | vs the diagonals above "
            f"{100 * float(gap.mean()):+.2f} ({low:+.2f} to {high:+.2f})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("run")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    main(args.data, args.run, args.precision, args.batch_size, args.repeats)
