"""Long-tailed CIFAR-10 (imbalance ratio 100, Cao et al. 2019's exponential profile: 5,000 down to 50 training
images per class, 12,406 in all; the balanced test split unchanged), trained with plain cross-entropy and
with each of cnnlab's imbalance options, one after the other in this process.

    python benchmarks/long_tailed.py DATA [EPOCHS] [OPTIONS]

OPTIONS is a comma-separated list of none, balanced, effective and sampler (default: all four). Prints one
markdown table: overall and balanced test accuracy, and the accuracy (recall) of the three rarest classes,
with the CPU and the seconds each run took. The seed recipe, at EPOCHS epochs (default 30).
"""

from __future__ import annotations

import sys
import time

import cnnlab
from cnnlab.device import cpu_description
from cnnlab.imbalance import long_tailed
from cnnlab.train import train

OPTIONS = {
    "none": {},
    "balanced": {"class_weights": "balanced"},
    "effective": {"class_weights": "effective"},
    "sampler": {"sampler": "balanced"},
}


def main() -> None:
    source = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    chosen = sys.argv[3].split(",") if len(sys.argv) > 3 else list(OPTIONS)
    data = long_tailed(cnnlab.load_dataset(source, progress=False), ratio=100, seed=0)
    counts = data.train_labels.bincount().tolist()
    rare = sorted(range(data.num_classes), key=counts.__getitem__)[:3]
    cpu = cpu_description()
    print(
        f"CPU: {cpu['name']} (family {cpu['family']}, model {cpu['model']}, {cpu['isa']}); "
        f"{len(data.train_labels):,} training images, per class {counts}"
    )
    print(f"seed recipe, {epochs} epochs; rarest classes: {', '.join(data.classes[k] for k in rare)}\n")
    print("| loss / sampling | test acc | balanced acc | " + " | ".join(data.classes[k] for k in rare) + " | seconds |")
    print("|---|---:|---:|" + "---:|" * len(rare) + "---:|")
    for name in chosen:
        recipe = cnnlab.load_recipe("seed", {"epochs": epochs, **OPTIONS[name]})
        started = time.perf_counter()
        result = train(recipe, data, runs_dir=None, progress=False)
        seconds = time.perf_counter() - started
        metrics = result.summary["test_metrics"]
        rare_recall = [metrics["per_class"][data.classes[k]]["recall"] for k in rare]
        cells = [
            f"{result.summary['final_test_acc']:.2f}",
            f"{metrics['balanced_acc']:.2f}",
            *(f"{r:.1f}" for r in rare_recall),
        ]
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
