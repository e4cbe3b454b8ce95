"""cnnlab's speedrun runs against airbench94's on the same CPU (issue 24, point 3): each group's test
accuracy with and without TTA over its seeds, and each cnnlab group's difference from airbench, with
Welch's 95% interval (cnnlab.stats.compare, as `cnnlab sweep` reports it).

    python benchmarks/compare_with_airbench.py AIRBENCH_JSON [...] --cnnlab LABEL=RUN_FOLDER,RUN_FOLDER,... [...]

AIRBENCH_JSON: the --out files of benchmarks/airbench_cpu.py. Each --cnnlab group is a list of
`cnnlab train` run folders (their summary.json).
"""

import argparse
import json
from pathlib import Path

from cnnlab.stats import compare, summarise


def airbench_runs(paths: list[Path]) -> list[dict]:
    runs = [run for path in paths for run in json.loads(path.read_text())["runs"]]
    return [dict(seed=r["seed"], acc=100 * r["accuracy"], tta=100 * r["tta_accuracy"]) for r in runs]


def cnnlab_runs(folders: list[Path]) -> list[dict]:
    summaries = [
        (json.loads((f / "config.json").read_text()), json.loads((f / "summary.json").read_text())) for f in folders
    ]
    return [dict(seed=c["recipe"]["seed"], acc=s["final_test_acc"], tta=s["final_tta_test_acc"]) for c, s in summaries]


def line(label: str, runs: list[dict], baseline: list[dict] | None) -> str:
    parts = [f"{label:<22} seeds {','.join(str(r['seed']) for r in runs):<10}"]
    for key in ("acc", "tta"):
        values = [r[key] for r in runs]
        s = summarise(values)
        parts.append(f"{s.mean:6.2f} ± {s.std:4.2f}")
        if baseline is None:
            parts.append(" " * 28)
        else:
            c = compare(values, [r[key] for r in baseline])
            parts.append(f"{c.difference:+5.2f} ({c.welch_low:+.2f} to {c.welch_high:+.2f})".rjust(28))
    return "  ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("airbench", nargs="+", type=Path, help="airbench_cpu.py --out files")
    parser.add_argument("--cnnlab", action="append", default=[], metavar="LABEL=RUN,RUN", help="a group of runs")
    args = parser.parse_args()
    airbench = airbench_runs(args.airbench)
    print(
        f"{'group':<22} {'seeds':<16}{'test acc':>13}  {'vs airbench (Welch 95%)':>28}  {'with TTA':>13}  vs airbench"
    )
    print(line("airbench94 (CPU)", airbench, None))
    for group in args.cnnlab:
        label, folders = group.split("=", 1)
        print(line(label, cnnlab_runs([Path(f) for f in folders.split(",")]), airbench))


if __name__ == "__main__":
    main()
