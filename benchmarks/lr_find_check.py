"""The learning-rate finder against the shipped rates: for each recipe, the sweep's suggestions (the same
sweep as `cnnlab lr-find`), then a short run at the shipped rate and one at the suggested rate, on the same
data, one after the other in this process.

    python benchmarks/lr_find_check.py DATA [EPOCHS] [RECIPES] [PLOTS_FOLDER]

EPOCHS (default 5) shortens each recipe, keeping its shape; RECIPES defaults to seed,speedrun-cpu. The
sweep's figure for each recipe goes to PLOTS_FOLDER (default: the current folder).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import cnnlab
from cnnlab.device import cpu_description
from cnnlab.lrfind import find_learning_rate
from cnnlab.plots import plot_lr_find
from cnnlab.train import train


def main() -> None:
    source = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    recipes = sys.argv[3].split(",") if len(sys.argv) > 3 else ["seed", "speedrun-cpu"]
    plots = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(".")
    data = cnnlab.load_dataset(source, progress=False)
    cpu = cpu_description()
    print(f"CPU: {cpu['name']} (family {cpu['family']}, model {cpu['model']}, {cpu['isa']}); {epochs}-epoch runs\n")
    print("| recipe | shipped lr | valley | steepest | minimum/10 | sweep s | acc at shipped | acc at valley |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in recipes:
        recipe = cnnlab.load_recipe(name)
        started = time.perf_counter()
        found = find_learning_rate(recipe, data)
        sweep_seconds = time.perf_counter() - started
        plot_lr_find(found, plots / f"lr-find-{name}.png", title=f"{name} ({recipe.model}), shipped lr {recipe.lr:g}")
        suggested = float(f"{found.suggestion:.3g}")
        accuracy = {}
        for label, lr in (("shipped", recipe.lr), ("valley", suggested)):
            short = cnnlab.load_recipe(name, {"epochs": epochs})
            result = train(dataclasses.replace(short, lr=lr), data, runs_dir=None, progress=False)
            accuracy[label] = result.summary["final_test_acc"]
        s = found.suggestions
        print(
            f"| {name} | {recipe.lr:g} | {s['valley']:.3g} | {s['steepest']:.3g} | {s['minimum/10']:.3g} | "
            f"{sweep_seconds:.0f} | {accuracy['shipped']:.2f} | {accuracy['valley']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
