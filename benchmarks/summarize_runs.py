"""Mean, std and range of final test accuracy (and time) over groups of run folders.

    python benchmarks/summarize_runs.py RUNS_DIR PREFIX [PREFIX ...]

Every run folder whose name starts with PREFIX forms one group.
"""

import json
import statistics
import sys
from pathlib import Path


def main(runs_dir: str, prefixes: list[str]) -> None:
    print(f"{'group':<16} {'n':>2} {'final test acc (mean ± std)':>28} {'min':>7} {'max':>7} {'train s/epoch':>14}")
    for prefix in prefixes:
        runs = sorted(p for p in Path(runs_dir).iterdir() if p.name.startswith(prefix) and (p / "summary.json").is_file())
        if not runs:
            print(f"{prefix:<16} no finished runs")
            continue
        summaries = [json.loads((p / "summary.json").read_text()) for p in runs]
        accs = [s["final_test_acc"] for s in summaries]
        per_epoch = [s["train_seconds"] / s["epochs"] for s in summaries]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{prefix:<16} {len(accs):>2} {statistics.mean(accs):>20.2f} ± {std:<5.2f} {min(accs):7.2f} {max(accs):7.2f} "
              f"{statistics.median(per_epoch):14.1f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
