"""Mean, std and range of final test accuracy (with TTA where the runs made it) and times over groups of run folders.

    python benchmarks/summarize_runs.py RUNS_DIR PREFIX [PREFIX ...]

Every run folder whose name starts with PREFIX forms one group. Times are medians over the group:
training seconds per epoch and in all, and the wall time of the train() call (evaluations and TTA
included; /usr/bin/time adds the interpreter's start-up and loading the decoded data).
"""

import json
import statistics
import sys
from pathlib import Path


def main(runs_dir: str, prefixes: list[str]) -> None:
    print(
        f"{'group':<16} {'n':>2} {'final test acc (mean ± std)':>28} {'min':>7} {'max':>7} {'with TTA':>15} "
        f"{'train s/epoch':>14} {'train s':>8} {'wall s':>7}"
    )
    for prefix in prefixes:
        runs = sorted(
            p for p in Path(runs_dir).iterdir() if p.name.startswith(prefix) and (p / "summary.json").is_file()
        )
        if not runs:
            print(f"{prefix:<16} no finished runs")
            continue
        summaries = [json.loads((p / "summary.json").read_text()) for p in runs]
        accs = [s["final_test_acc"] for s in summaries]
        per_epoch = [s["train_seconds"] / s["epochs"] for s in summaries]
        tta = [s["final_tta_test_acc"] for s in summaries if "final_tta_test_acc" in s]
        std = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
        tta_text = f"{statistics.mean(tta):.2f} ± {std(tta):.2f}" if tta else "-"
        print(
            f"{prefix:<16} {len(accs):>2} {statistics.mean(accs):>20.2f} ± {std(accs):<5.2f} {min(accs):7.2f} "
            f"{max(accs):7.2f} {tta_text:>15} {statistics.median(per_epoch):14.1f} "
            f"{statistics.median(s['train_seconds'] for s in summaries):8.0f} "
            f"{statistics.median(s['wall_seconds'] for s in summaries):7.0f}"
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
