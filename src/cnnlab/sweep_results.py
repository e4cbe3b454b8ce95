"""A sweep's results: one row per trial, one per variant with its statistics and its comparison with the
baseline (stats.py), written as results.csv, variants.csv, results.json, summary.md and sweep.png."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from .runs import atomic_write_bytes
from .stats import compare, seeds_to_detect, summarise
from .sweep import SweepSpec, trial_state
from .sweep_trials import trial_summary

TRIAL_COLUMNS = (
    "trial", "variant", "seed", "status", "val_acc", "test_acc", "tta_test_acc", "train_seconds", "wall_seconds",
)  # fmt: skip


def collect(spec: SweepSpec, folder: Path, variants: list | None = None, pruned=()) -> dict:
    """Every trial's numbers (from its summary.json) and every variant's statistics. The score is the final
    test accuracy, over 10 views when the recipe evaluates with TTA; a search (random or TPE) with a
    validation split is scored on it instead, so the variant it picks was not chosen on the test split.
    variants: a TPE search's (from its study); pruned: the trials the search stopped."""
    variants = spec.variants() if variants is None else variants
    trials = []
    for trial, variant, seed, _ in spec.trials(variants):
        run = folder / "runs" / trial
        row = {"trial": trial, "variant": variant, "seed": seed, "status": trial_state(run)}
        if row["status"] == "done":
            summary = trial_summary(run)
            row.update(
                val_acc=summary.get("final_val_acc"),
                test_acc=summary["final_test_acc"],
                tta_test_acc=summary.get("final_tta_test_acc"),
                train_seconds=summary["train_seconds"],
                wall_seconds=summary["wall_seconds"],
            )
        elif trial in pruned:
            row["status"] = "pruned"
        trials.append(row)
    done = [t for t in trials if t["status"] == "done"]
    metric = _score(spec, done)
    baseline = spec.baseline_variant(variants)
    scores = {name: [t[metric] for t in done if t["variant"] == name] for name, _ in variants}
    rows = []
    for name, fields in variants:
        values = scores[name]
        row = {"variant": name, "fields": fields, "n": len(values)}
        if values:
            s = summarise(values)
            times = [t["wall_seconds"] for t in done if t["variant"] == name]
            row.update(
                mean=s.mean, std=s.std, ci_low=s.low, ci_high=s.high, median_wall_seconds=statistics.median(times)
            )
        if name != baseline and values and scores[baseline]:
            c = compare(values, scores[baseline])
            row.update(
                difference=c.difference,
                welch_low=c.welch_low,
                welch_high=c.welch_high,
                bootstrap_low=c.bootstrap_low,
                bootstrap_high=c.bootstrap_high,
                verdict=c.verdict,
                seeds_needed=c.seeds_needed,
                words=c.words(len(values), len(scores[baseline])),
            )
        rows.append(row)
    return {"metric": metric, "baseline": baseline, "search": spec.search, "trials": trials, "variants": rows}


# What a trial is scored on, first choice first: a held-out validation split (searches only: a grid compares on
# test, as the field does), the test split over 10 views, the test split.
SCORES = ("val_acc", "tta_test_acc", "test_acc")


def _score(spec: SweepSpec, done: list[dict]) -> str:
    """The first score every finished trial has."""
    usable = SCORES if spec.search != "grid" else SCORES[1:]
    return next((m for m in usable if done and all(t.get(m) is not None for t in done)), "test_acc")


def trial_score(summary: dict) -> float:
    """One trial's value for a search (its summary.json): the first score it has."""
    return next(summary[f"final_{m}"] for m in SCORES if summary.get(f"final_{m}") is not None)


def seeds_needed_table(results: dict, difference: float) -> list[tuple[str, int | None]]:
    """Per variant: the seeds each side would need to detect `difference` points, from its own spread."""
    return [(v["variant"], seeds_to_detect(difference, v.get("std", 0.0))) for v in results["variants"]]


def format_summary(results: dict) -> str:
    """The variants as a markdown table, then each comparison with the baseline in words."""
    lines = [
        f"score: final {results['metric'].replace('_', ' ')} (%); baseline: {results['baseline']}",
        "",
        "| variant | n | mean | std | 95% interval | median wall s |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for v in results["variants"]:
        if not v["n"]:
            lines.append(f"| {v['variant']} | 0 | | | | |")
            continue
        lines.append(
            f"| {v['variant']} | {v['n']} | {v['mean']:.2f} | {v['std']:.2f} | {v['ci_low']:.2f} to {v['ci_high']:.2f} "
            f"| {v['median_wall_seconds']:.0f} |"
        )
    lines.append("")
    lines += [
        f"- {v['variant']} against {results['baseline']}: {v['words']}" for v in results["variants"] if "words" in v
    ]
    scored = [v for v in results["variants"] if v["n"]]
    if results.get("search", "grid") != "grid" and scored:
        best = max(scored, key=lambda v: v["mean"])
        lines.append(f"- best of the {results['search']} search: {best['variant']} ({best['mean']:.2f}, n {best['n']})")
    pruned = [t["trial"] for t in results["trials"] if t["status"] == "pruned"]
    if pruned:
        lines.append(f"- pruned (stopped early as clearly losing; their scores are not counted): {', '.join(pruned)}")
    missing = [t["trial"] for t in results["trials"] if t["status"] not in ("done", "pruned")]
    if missing:
        lines.append(f"- not finished: {', '.join(missing)} (rerun the sweep to finish them)")
    return "\n".join(lines)


def write_results(results: dict, folder: Path) -> None:
    atomic_write_bytes(folder / "results.csv", _csv(TRIAL_COLUMNS, results["trials"]))
    fields = list(dict.fromkeys(name for v in results["variants"] for name in v["fields"]))
    columns = ("variant", *fields, "n", "mean", "std", "ci_low", "ci_high", "median_wall_seconds", "difference",
               "welch_low", "welch_high", "bootstrap_low", "bootstrap_high", "verdict", "seeds_needed")  # fmt: skip
    rows = [{**v["fields"], **{k: x for k, x in v.items() if k != "fields"}} for v in results["variants"]]
    atomic_write_bytes(folder / "variants.csv", _csv(columns, rows))
    atomic_write_bytes(folder / "results.json", json.dumps(results, indent=1).encode())
    atomic_write_bytes(folder / "summary.md", (format_summary(results) + "\n").encode())
    if any(v["n"] for v in results["variants"]):
        plot_sweep(results, folder / "sweep.png")


def _csv(columns, rows) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def plot_sweep(results: dict, path: Path) -> Path:
    """Each variant's mean with its 95% interval and its trials; and every trial's score against its time."""
    from .plots import _figure, _save

    fig = _figure(10, 4)
    left, right = fig.subplots(1, 2)
    shown = [v for v in results["variants"] if v["n"]]
    for k, v in enumerate(shown):
        scores = [
            t[results["metric"]] for t in results["trials"] if t["variant"] == v["variant"] and t["status"] == "done"
        ]
        left.scatter([k] * len(scores), scores, color="0.6", s=12, zorder=2)
        left.errorbar(k, v["mean"], yerr=[[v["mean"] - v["ci_low"]], [v["ci_high"] - v["mean"]]], fmt="o", color="C0",
                      capsize=4, zorder=3)  # fmt: skip
        times = [t["wall_seconds"] for t in results["trials"] if t["variant"] == v["variant"] and t["status"] == "done"]
        right.scatter(times, scores, label=v["variant"], s=14)
    left.set_xticks(range(len(shown)), [v["variant"] for v in shown], rotation=20, ha="right", fontsize=8)
    left.set_ylabel(f"{results['metric'].replace('_', ' ')} (%)")
    left.set_title("mean and 95% interval (Student's t); grey: each seed", fontsize=9)
    right.set_xlabel("wall seconds per trial")
    right.set_ylabel(f"{results['metric'].replace('_', ' ')} (%)")
    right.set_title("accuracy against time", fontsize=9)
    right.legend(fontsize=7)
    return _save(fig, path)


def read_sweep(folder: str | Path) -> tuple[SweepSpec, dict]:
    """A sweep folder's spec and its results as they stand (finished trials only: a partial sweep too)."""
    import dataclasses

    from .errors import CnnlabError
    from .names import shown
    from .runfiles import read_json

    folder = Path(folder)
    if not (folder / "sweep.json").is_file():
        raise CnnlabError(f"{shown(folder)} has no sweep.json; is it a cnnlab sweep folder?")
    recorded = read_json(folder / "sweep.json")
    known = {f.name for f in dataclasses.fields(SweepSpec)}
    spec = SweepSpec(**{k: v for k, v in recorded.items() if k in known})
    if spec.search != "tpe":
        return spec, collect(spec, folder)
    from .sweep_search import open_study, study_variants, variant_trials

    study = open_study(spec, folder, create=False)
    trials = variant_trials(study)
    if not trials:
        raise CnnlabError(f"the TPE search in {shown(folder)} has asked for no variant yet; rerun the sweep")
    variants = study_variants(trials)
    pruned = {
        name for t, variant in zip(trials, variants) if t.state.name == "PRUNED" for name, *_ in spec.trials([variant])
    }
    return spec, collect(spec, folder, variants, pruned)
