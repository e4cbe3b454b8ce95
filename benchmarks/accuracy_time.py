"""The accuracy-time curve of a group of runs with the same recipe and different seeds.

    python benchmarks/accuracy_time.py RUN [RUN ...]

Per epoch: the mean (and min-max) test accuracy over the runs, against the median cumulative training
time; then the final accuracy with test-time augmentation, and the median wall time of the whole run.
"""

import json
import statistics
import sys
from pathlib import Path


def main(runs: list[str]) -> None:
    histories = [[json.loads(line) for line in (Path(r) / "metrics.jsonl").read_text().splitlines()] for r in runs]
    summaries = [json.loads((Path(r) / "summary.json").read_text()) for r in runs]
    epochs = min(len(h) for h in histories)
    print(f"{len(runs)} runs: {', '.join(Path(r).name for r in runs)}")
    print(f"{'epoch':>5} {'train s (median, cumulative)':>29} {'test acc mean':>14} {'min-max':>14}")
    for e in range(epochs):
        seconds = statistics.median(sum(row["seconds"] for row in h[: e + 1]) for h in histories)
        accs = [h[e]["test_acc"] for h in histories]
        print(f"{e + 1:5d} {seconds:29.0f} {statistics.mean(accs):14.2f} {min(accs):7.2f}-{max(accs):<6.2f}")
    tta = [s["final_tta_test_acc"] for s in summaries if "final_tta_test_acc" in s]
    final = [s["final_test_acc"] for s in summaries]
    spread = lambda xs: f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.2f}"
    print(f"final test acc {spread(final)}" + (f"; with TTA {spread(tta)}" if tta else ""))
    print(
        "median wall (train() call, data from the cache): "
        f"{statistics.median(s['wall_seconds'] for s in summaries):.0f} s; "
        f"median training time {statistics.median(s['train_seconds'] for s in summaries):.0f} s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
