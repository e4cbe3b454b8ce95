"""Evaluation of the test split in float32 against bf16 autocast for trained runs: seconds and accuracy.
The evidence behind `eval_precision = "auto"` (learning-curve points in the training precision).

    python benchmarks/eval_precision.py DATA RUN [RUN ...] [--repeats 3] [--tta]

--tta also times the final test-time augmentation over the run's own views (its recipe's `tta_views`),
once in float32 and once in bf16 (the evidence behind `tta_precision = "auto"` in the speedrun CPU recipes).
"""

import argparse
import statistics
import time

import torch

from cnnlab.data import load_dataset
from cnnlab.device import autocast, tune_cpu_allocator
from cnnlab.evaluate import evaluate
from cnnlab.loader import Loader
from cnnlab.openrun import load_run


def main(data_source: str, runs: list[str], repeats: int, tta: bool) -> None:
    tune_cpu_allocator()
    data = load_dataset(data_source, progress=False)
    cpu = torch.device("cpu")
    print("run | model | eval batch | precision | seconds, median (min-max) | test acc | test loss")
    for path in runs:
        run = load_run(path, weights="last")
        run.dataset(data)  # the classes must fit
        model = run.model.to(memory_format=torch.channels_last)
        recipe = run.checkpoint["recipe"]
        loader = Loader(
            data.test_images,
            data.test_labels,
            recipe["eval_batch_size"],
            run.normalizer,
            device=cpu,
            channels_last=True,
        )
        seconds = {"fp32": [], "bf16": []}
        for _ in range(repeats):  # interleaved, so a noisy moment slows both alike
            for precision in ("fp32", "bf16"):
                start = time.perf_counter()
                with autocast(cpu, precision):
                    result = evaluate(model, loader)
                seconds[precision].append(time.perf_counter() - start)
                seconds[precision + " result"] = result
        for precision in ("fp32", "bf16"):
            s, result = seconds[precision], seconds[precision + " result"]
            print(
                f"{path} | {recipe['model']} | {recipe['eval_batch_size']} | {precision} | "
                f"{statistics.median(s):.2f} ({min(s):.2f}-{max(s):.2f}) | {result['acc']:.2f}% | {result['loss']:.4f}"
            )
        if tta:  # once per precision: the views cost 6 or 10 evaluations each
            views = recipe.get("tta_views", "shifts")
            for precision in ("fp32", "bf16"):
                start = time.perf_counter()
                with autocast(cpu, precision):
                    result = evaluate(model, loader, tta=True, views=views)
                print(
                    f"{path} | {recipe['model']} | {recipe['eval_batch_size']} | {precision}, TTA over {views} | "
                    f"{time.perf_counter() - start:.2f} (once) | {result['acc']:.2f}% | {result['loss']:.4f}",
                    flush=True,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--tta", action="store_true", help="also time the run's TTA evaluation, once in float32 and once in bf16"
    )
    args = parser.parse_args()
    main(args.data, args.runs, args.repeats, args.tta)
