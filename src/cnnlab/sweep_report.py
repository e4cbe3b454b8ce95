"""A sweep's section of `cnnlab report SWEEP`: the question (spec), each variant's statistics and its
comparison with the baseline in words, the figure, and every trial with its numbers. Self-contained, as
the run report is; it reads the sweep folder as it stands, so a partial sweep can be reported."""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import __version__
from .report import STYLE, _e, _img
from .runs import atomic_write_bytes
from .sweep_results import plot_sweep, read_sweep


def write_sweep_report(folder: str | Path, out: str | Path | None = None, read=None) -> Path:
    """read: the (spec, results) of sweep_results.read_sweep when the caller has them already."""
    folder = Path(folder)
    spec, results = read or read_sweep(folder)
    out = Path(out) if out else folder / "report.html"
    title = f"cnnlab sweep: {folder.name}"
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>",
        f"<p class='meta'>written {time.strftime('%Y-%m-%d %H:%M')} by cnnlab {__version__}</p>",
        _question(spec, results),
        _variants(results),
    ]
    if any(v["n"] for v in results["variants"]):
        figure = plot_sweep(results, folder / "sweep.png")
        parts.append(f"<h2>Accuracy with its interval, and against time</h2>{_img(figure, 'sweep')}")
    parts += [_trials(results), "</body></html>"]
    atomic_write_bytes(out, "\n".join(parts).encode("utf-8"))
    return out


def _question(spec, results: dict) -> str:
    done = sum(t["status"] == "done" for t in results["trials"])
    varied = {
        **{k: f"one of {v}" for k, v in spec.grid.items()},
        **{k: f"{v[0]} to {v[1]}{' (log)' if v[2:] else ''}" for k, v in spec.ranges.items()},
    }
    rows = [
        ("base recipe", spec.recipe), ("changed on it", json.dumps(spec.overrides) if spec.overrides else "nothing"),
        ("data", spec.data), ("search", spec.search + (f", {spec.samples} variants" if spec.samples else "")),
        ("varied", "; ".join(f"{k}: {v}" for k, v in varied.items()) or "nothing (seeds only)"),
        ("seeds per variant", len(spec.seeds)), ("score", results["metric"].replace("_", " ")),
        ("baseline", results["baseline"]), ("trials finished", f"{done} of {len(results['trials'])}"),
    ]  # fmt: skip
    return (
        "<h2>The question</h2><table>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _header(*names: str) -> str:
    return "<tr>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"


def _variants(results: dict) -> str:
    head = _header("variant", "n", "mean", "std", "95% interval", "median wall s", "against the baseline")
    rows = []
    for v in results["variants"]:
        if not v["n"]:
            rows.append(
                f"<tr><td>{_e(v['variant'])}</td><td class='num'>0</td><td colspan='5'>no finished trial</td></tr>"
            )
            continue
        against = "(the baseline)" if v["variant"] == results["baseline"] else v.get("words", "")
        rows.append(
            f"<tr><td>{_e(v['variant'])}</td><td class='num'>{v['n']}</td><td class='num'>{v['mean']:.2f}</td>"
            f"<td class='num'>{v['std']:.2f}</td><td class='num'>{v['ci_low']:.2f} to {v['ci_high']:.2f}</td>"
            f"<td class='num'>{v['median_wall_seconds']:.0f}</td><td>{_e(against)}</td></tr>"
        )
    note = (
        "<p>Intervals are Student's t on each variant's seeds; each comparison is Welch's difference of means with"
        " its 95% interval (a bootstrap interval is in variants.csv). 'No detectable difference' is not 'the same':"
        " it says how many seeds would resolve a difference of the size observed.</p>"
    )
    return f"<h2>Variants</h2><table>{head}{''.join(rows)}</table>{note}"


def _trials(results: dict) -> str:
    head = _header("trial", "status", "val acc", "test acc", "with TTA", "train s", "wall s")

    def cell(value, digits):
        return f"<td class='num'>{value:.{digits}f}</td>" if isinstance(value, (int, float)) else "<td></td>"

    rows = [
        f"<tr><td>{_e(t['trial'])}</td><td>{_e(t['status'])}</td>{cell(t.get('val_acc'), 2)}"
        f"{cell(t.get('test_acc'), 2)}{cell(t.get('tta_test_acc'), 2)}{cell(t.get('train_seconds'), 0)}"
        f"{cell(t.get('wall_seconds'), 0)}</tr>"
        for t in results["trials"]
    ]
    where = "<p>Each is a run folder in runs/; <code>cnnlab report runs/TRIAL</code> reports one.</p>"
    return f"<h2>Trials</h2>{where}<table>{head}{''.join(rows)}</table>"
