"""`cnnlab report`: one self-contained HTML page (images embedded, no scripts, no network) for a run,
or a side-by-side comparison of several runs followed by each run's section.

A run's figures and confusion.json are made at the end of training; a run that lacks them (trained
with --no-plots, or by an older cnnlab) gets them drawn here first, from its own data.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

from . import __version__
from .analysis import RunRecord, read_run
from .diagnose import diagnose
from .errors import CnnlabError, UsageError
from .names import shown
from .runfiles import read_json
from .runs import atomic_write_bytes

# Figures that other commands leave in a run folder, shown when present (title, file).
EXTRA_FIGURES = [
    ("Confused pairs (cnnlab confusion)", "confused_pairs.png"),
    ("First-layer filters (cnnlab inspect)", "filters.png"),
    ("Feature maps (cnnlab inspect)", "feature_maps.png"),
    ("Class evidence, Grad-CAM (cnnlab inspect)", "gradcam.png"),
]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.headline { display: flex; gap: 1em; flex-wrap: wrap; }
.headline div { background: #f4f6fa; border-radius: 6px; padding: 0.6em 1em; }
.headline b { display: block; font-size: 1.5em; }
.verdict { font-weight: bold; text-transform: uppercase; }
img { max-width: 100%; height: auto; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
"""


def write_report(runs: list[str | Path], out: str | Path | None = None, data=None, weights: str = "auto") -> Path:
    """Write the report and return its path. Each run is shown with its `weights` (openrun: auto, best, last
    or ema); `data(image_size)` may supply the test data for runs whose figures must be drawn."""
    from .openrun import load_run

    records = [read_run(r) for r in runs]
    opened = [load_run(r.path, weights) for r in records]
    names = [r.name for r in records]
    if len(set(names)) != len(names):
        names = [str(r.path) for r in records]  # same folder names from different parents: use paths
    for record, run in zip(records, opened):
        _ensure_figures(record, run, data)
    if out is None:
        out = records[0].path / "report.html" if len(records) == 1 else Path("report.html")
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"out {out} is a folder; give a file name such as {out / 'report.html'}", parameters=("out",))
    title = f"cnnlab report: {names[0]}" if len(records) == 1 else f"cnnlab comparison of {len(records)} runs"
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>written {time.strftime('%Y-%m-%d %H:%M')} by cnnlab {__version__}</p>",
    ]
    if len(records) > 1:
        parts.append(_comparison(records, opened, names))
    for record, run, name in zip(records, opened, names):
        parts.append(_run_section(record, run, name, level=2 if len(records) > 1 else None))
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, "\n".join(parts).encode("utf-8"))
    return out


def _ensure_figures(record: RunRecord, run, data) -> None:
    """The run's figures, drawn from `run`'s weights when missing, damaged or drawn from other weights."""
    from .plots import RUN_PLOTS, make_run_plots

    confusion = _confusion(record)
    if (
        all((record.path / f).is_file() for f in RUN_PLOTS)
        and confusion
        and confusion.get("weights") == run.weights.describe()
    ):
        return
    predictions = run.test_predictions(data(run.image_size) if data is not None else None)
    make_run_plots(record, predictions, run.weights, run.temperature)


def _weights_accuracy(record: RunRecord, run) -> float:
    """The test accuracy of the weights shown: their epoch's row (the moving average's own column for ema.pt)."""
    row = record.rows[min(run.weights.epoch, len(record.rows)) - 1]
    return row.get("ema_test_acc", row["test_acc"]) if run.weights.file.name == "ema.pt" else row["test_acc"]


def _confusion(record: RunRecord) -> dict | None:
    """The run's confusion.json when it is whole; None when it is missing or damaged (then it is redrawn)."""
    try:
        confusion = read_json(record.path / "confusion.json")
        classes, pairs = confusion["classes"], confusion["most_confused"]
        ok = (
            isinstance(classes, list)
            and isinstance(pairs, list)
            and all(
                isinstance(p, dict)
                and all(isinstance(p.get(k), int) for k in ("a", "b", "total", "a_as_b", "b_as_a"))
                and 0 <= p["a"] < len(classes)
                and 0 <= p["b"] < len(classes)
                for p in pairs
            )
        )
    except (CnnlabError, KeyError, TypeError):
        return None
    return confusion if ok else None


def _robustness(path: Path) -> dict:
    result = read_json(path, "measure it again with cnnlab robustness RUN")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    table = result.get("table")
    if not (
        isinstance(table, dict)
        and all(isinstance(v, list) and len(v) == 5 and all(map(number, v)) for v in table.values())
        and number(result.get("clean_acc"))
        and number(result.get("mean_corruption_acc"))
    ):
        raise CnnlabError(
            f"{shown(path)} is damaged (not a robustness table); measure it again with cnnlab robustness RUN"
        )
    return result


def _e(text) -> str:
    return html.escape(str(text))


def _img(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{encoded}'>"


def _figure_png(fig_maker) -> str:
    """Embed a figure drawn into memory (the comparison plot belongs to no run folder)."""
    buffer = io.BytesIO()
    fig_maker().savefig(buffer, format="png")
    return f"<img alt='comparison' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}'>"


def _comparison(records: list[RunRecord], opened: list, names: list[str]) -> str:
    rows = [
        "<h2>Comparison</h2><table><tr><th>run</th><th>model</th><th>recipe</th><th>epochs</th>"
        "<th>test acc (weights)</th><th>best held-out acc (epoch)</th><th>train-held-out gap</th><th>verdict</th>"
        "<th>train time</th></tr>"
    ]
    for record, run, name in zip(records, opened, names):
        recipe = record.config.get("recipe", {})
        d = diagnose(record)
        last = record.rows[-1]
        seconds = sum(r.get("seconds", 0) for r in record.rows)
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_e(recipe.get('model', '?'))}</td><td>{_e(recipe.get('name', '?'))}</td>"
            f"<td class='num'>{last['epoch']}</td><td class='num'>{_weights_accuracy(record, run):.2f}% "
            f"({_e(run.weights.describe())})</td>"
            f"<td class='num'>{d.numbers['best_eval_acc']:.2f}% ({d.numbers['best_epoch']})</td>"
            f"<td class='num'>{d.numbers['gap']:+.2f}</td><td>{_e(d.verdict)}</td>"
            f"<td class='num'>{seconds:.0f} s</td></tr>"
        )
    rows.append("</table>")

    def draw():
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 4.5), dpi=110, layout="constrained")
        ax = fig.subplots()
        for k, (record, name) in enumerate(zip(records, names)):
            split = record.eval_split
            ax.plot(
                [r["epoch"] for r in record.rows],
                [r[f"{split}_acc"] for r in record.rows],
                "o-",
                ms=3,
                color=f"C{k % 10}",
                label=f"{name} ({split})",
            )
        ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Held-out accuracy per epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return fig

    rows.append(_figure_png(draw))
    return "\n".join(rows)


def _run_section(record: RunRecord, run, name: str, level: int | None) -> str:
    h = (lambda text: f"<h{level}>{_e(text)}</h{level}>") if level else (lambda text: "")
    sub = lambda text: f"<h{(level or 1) + 1}>{_e(text)}</h{(level or 1) + 1}>"
    d = diagnose(record)
    out = [h(f"Run {name}"), f"<p class='meta'>{_e(record.path)}</p>"]
    if not record.summary:
        out.append("<p><b>This run has not finished</b>: the numbers below are from its last completed epoch.</p>")
    out += [
        _headline(record, run, d),
        sub("Diagnosis"),
        _diagnosis(d),
        sub("Learning curves"),
        _img(record.path / "curves.png", "learning curves"),
        sub("Confusion"),
        _confusion_table(record),
        sub("Per-class accuracy"),
        _img(record.path / "per_class.png", "per-class accuracy"),
        sub("Classification report and calibration"),
        _classification(record.path),
        sub("Most confident mistakes"),
        _img(record.path / "errors.png", "most confident mistakes"),
    ]
    for title, file in EXTRA_FIGURES:
        if (record.path / file).is_file():
            out += [sub(title), _img(record.path / file, title)]
    if (record.path / "robustness.json").is_file():
        out.append(_robustness_section(_robustness(record.path / "robustness.json"), record.path, sub))
    out += [sub("Configuration"), _configuration(record), sub("Metrics per epoch"), _metrics_table(record)]
    return "\n".join(out)


def _diagnosis(d) -> str:
    return (
        f"<p>Verdict: <span class='verdict'>{_e(d.verdict)}</span></p><ul>"
        + "".join(f"<li>{_e(r)}</li>" for r in d.reasons)
        + "</ul>"
        + "<p>Remedies, most promising first:</p><ol>"
        + "".join(
            f"<li>{_e(r)}" + (f"<br><code>{_e(d.commands[k])}</code>" if k < len(d.commands) else "") + "</li>"
            for k, r in enumerate(d.remedies)
        )
        + "</ol>"
        + "".join(f"<p class='meta'>Note: {_e(n)}</p>" for n in d.notes)
    )


def _classification(folder: Path) -> str:
    """Precision, recall and F1 per class with their averages, balanced and top-5 accuracy, and the ECE
    before and after the run's temperature, with the reliability diagram (plots.make_run_plots)."""
    try:
        c = read_json(folder / "classification.json")
        rows = [(name, m["precision"], m["recall"], m["f1"], m["support"]) for name, m in c["per_class"].items()]
        total = sum(r[4] for r in rows)
        rows += [
            (f"{avg} average", *(c[avg][k] for k in ("precision", "recall", "f1")), total)
            for avg in ("macro", "weighted")
        ]
    except (CnnlabError, KeyError, TypeError, ValueError):
        return "<p class='meta'>No classification report (classification.json is missing or damaged).</p>"
    table = (
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>"
        + "".join(
            f"<tr><td>{_e(name)}</td>"
            + "".join(f"<td class='num'>{v:.2f}</td>" for v in (p, r, f))
            + f"<td class='num'>{n}</td></tr>"
            for name, p, r, f, n in rows
        )
        + "</table>"
    )
    calibrated = (
        f", {c['ece_calibrated']:.2f}% after temperature scaling (T = {c['temperature']:.3g}, fitted on the "
        "validation split)"
        if c.get("temperature", 1.0) != 1.0
        else " (no temperature: the run had no validation split to fit one on)"
    )
    return (
        f"<p>Balanced accuracy {c['balanced_acc']:.2f}%, top-5 accuracy {c['top5_acc']:.2f}%. Expected calibration "
        f"error (15 bins) {c['ece']:.2f}%{_e(calibrated)}.</p>"
        + table
        + _img(folder / "reliability.png", "reliability diagram")
    )


def _confusion_table(record: RunRecord) -> str:
    confusion = _confusion(record)
    classes, out = confusion["classes"], [_img(record.path / "confusion.png", "confusion matrix")]
    if confusion["most_confused"]:
        out.append("<table><tr><th>most confused pair</th><th>errors</th><th>one way</th><th>the other way</th></tr>")
        for p in confusion["most_confused"]:
            a, b = classes[p["a"]], classes[p["b"]]
            out.append(
                f"<tr><td>{_e(a)} / {_e(b)}</td><td class='num'>{p['total']}</td>"
                f"<td>{_e(a)} taken for {_e(b)}: {p['a_as_b']}</td>"
                f"<td>{_e(b)} taken for {_e(a)}: {p['b_as_a']}</td></tr>"
            )
        out.append("</table>")
    return "\n".join(out)


def _configuration(record: RunRecord) -> str:
    config = record.config
    data = config.get("data", {})
    recipe = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in config.get("recipe", {}).items())
    versions = ", ".join(f"{k} {v}" for k, v in config.get("versions", {}).items())
    return (
        f"<table>{recipe}</table><p>Data: {_e(data.get('source', '?'))} (checksum {_e(data.get('checksum', '?'))}), "
        f"{data.get('train_used', '?')} training images, {data.get('val_held_out', 0)} held out for validation. "
        f"Versions: {_e(versions)}.</p>"
    )


def _metrics_table(record: RunRecord) -> str:
    wanted = ("epoch", "lr", "train_loss", "train_acc", "val_acc", "test_loss", "test_acc", "seconds")
    columns = [c for c in wanted if c in record.rows[-1]]
    body = "".join(
        "<tr>" + "".join(f"<td class='num'>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in record.rows
    )
    return "<table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>" + body + "</table>"


def _headline(record: RunRecord, run, d) -> str:
    """The cards at the top of a run's section: the reported weights' accuracy first."""
    config, summary, last = record.config, record.summary, record.rows[-1]
    cards = [
        (f"test accuracy, {run.weights.describe()}", f"{_weights_accuracy(record, run):.2f}%"),
        (f"best {d.numbers['split']} accuracy", f"{d.numbers['best_eval_acc']:.2f}% (epoch {d.numbers['best_epoch']})"),
        ("epochs", f"{last['epoch']}" + (" (stopped early)" if summary.get("stopped_early") else "")),
        ("training time", f"{sum(r.get('seconds', 0) for r in record.rows):.0f} s"),
        ("parameters", f"{config.get('parameters', 0):,}"),
        ("device", f"{config.get('device', '?')} ({config.get('precision', '?')})"),
    ]
    return "<div class='headline'>" + "".join(f"<div>{_e(k)}<b>{_e(v)}</b></div>" for k, v in cards) + "</div>"


def _robustness_section(result: dict, folder: Path, sub) -> str:
    out = [
        sub("Robustness under corruption (cnnlab robustness)"),
        f"<p>Clean test accuracy {result['clean_acc']:.2f}%; mean over {len(result['table'])} corruptions and 5 "
        f"severities <b>{result['mean_corruption_acc']:.2f}%</b>. The corruptions are generated in the manner of "
        f"CIFAR-10-C (seed {result['seed']}), not read from the published files.</p>",
        *(f"<p>{_e(name)} skipped: {_e(why)}.</p>" for name, why in result.get("skipped", {}).items()),
    ]
    if (folder / "robustness.png").is_file():
        out.append(_img(folder / "robustness.png", "accuracy under corruption"))
    out.append(
        "<table><tr><th>corruption</th>"
        + "".join(f"<th>severity {s}</th>" for s in range(1, 6))
        + "</tr>"
        + "".join(
            f"<tr><td>{_e(name)}</td>" + "".join(f"<td class='num'>{a:.2f}</td>" for a in accs) + "</tr>"
            for name, accs in result["table"].items()
        )
        + "</table>"
    )
    return "\n".join(out)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"
    return _e(value)
