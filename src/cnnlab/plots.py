"""PNG figures of a run: learning curves, confusion matrix, most confident errors, per-class accuracy,
the gallery of a confused pair, and the side-by-side curves of an ablation.

Figures are drawn with matplotlib's object API (no pyplot state, no display needed) and written
atomically, like every other file of a run folder.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from .analysis import Predictions, RunRecord
from .runs import atomic_write_bytes

RUN_PLOTS = ("curves.png", "confusion.png", "errors.png", "per_class.png", "reliability.png")


def _integer_epochs(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def _image(ax, image: torch.Tensor) -> None:
    """Show a uint8 [3, H, W] image without smoothing, without axes."""
    ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_curves(run: RunRecord, path: Path) -> Path:
    """The chapter's Figure 19.5.2 view: loss on the left; accuracies and the learning rate on the right."""
    rows = run.rows
    epochs = [r["epoch"] for r in rows]
    fig = _figure(11, 4.2)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], "o-", ms=3, label="training loss")
    for split, style in (("val", "s-"), ("test", "^-")):
        if f"{split}_loss" in rows[0]:
            loss_ax.plot(epochs, [r[f"{split}_loss"] for r in rows], style, ms=3, label=f"{split} loss")
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)

    acc_ax.plot(epochs, [r["train_acc"] for r in rows], "o-", ms=3, label="training (augmented batches)")
    for split, style in (("val", "s-"), ("test", "^-")):
        if f"{split}_acc" in rows[0]:
            acc_ax.plot(epochs, [r[f"{split}_acc"] for r in rows], style, ms=3, label=f"{split}")
    best = run.summary.get("best_epoch")
    if best:
        acc_ax.axvline(best, color="grey", ls=":", lw=1, label=f"best epoch ({best})")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    acc_ax.grid(alpha=0.3)
    lr_ax = acc_ax.twinx()
    lr_ax.plot(epochs, [r["lr"] for r in rows], color="tab:purple", alpha=0.5, lw=1, label="learning rate")
    lr_ax.set_ylabel("learning rate", color="tab:purple")
    lr_ax.set_ylim(bottom=0)
    handles = acc_ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    acc_ax.legend(handles=handles, loc="lower right", fontsize=8)
    _integer_epochs(loss_ax, acc_ax)
    fig.suptitle(f"{run.name}: learning curves")
    return _save(fig, path)


def plot_confusion(predictions: Predictions, path: Path, title: str = "") -> Path:
    """Rows are the true class, columns the predicted one; each cell shows its count and its row percentage."""
    matrix = predictions.confusion()
    classes, n = predictions.classes, len(predictions.classes)
    row_share = 100.0 * matrix.double() / matrix.sum(dim=1, keepdim=True).clamp_min(1)
    size = max(6.0, 0.62 * n + 2)
    fig = _figure(size, size * 0.9)
    ax = fig.subplots()
    shown = ax.imshow(row_share.numpy(), cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="% of the true class")
    if n <= 20:  # beyond that the numbers would not fit; the colours still read
        for i in range(n):
            for j in range(n):
                if not matrix[i, j]:
                    continue  # empty cells stay blank, so the errors stand out
                colour = "white" if row_share[i, j] > 60 else "black"
                ax.text(
                    j,
                    i,
                    f"{int(matrix[i, j])}\n{row_share[i, j]:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=colour,
                )
    ticks = range(n) if n <= 40 else []
    ax.set_xticks(list(ticks), [classes[i] for i in ticks], rotation=45, ha="right")
    ax.set_yticks(list(ticks), [classes[i] for i in ticks])
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(
        title or f"Confusion matrix: {predictions.accuracy:.2f}% of {len(predictions.labels)} test images right"
    )
    return _save(fig, path)


def plot_errors(predictions: Predictions, path: Path, count: int = 32, title: str = "") -> Path:
    """The most confidently wrong test images: where the model is surest and still mistaken."""
    index = predictions.most_confident_errors(count)
    return _gallery(predictions, index, path, title or f"The {len(index)} most confident mistakes on the test split")


def plot_pair_gallery(predictions: Predictions, pairs: list[dict], path: Path, per_direction: int = 6) -> Path:
    """For each confused pair (a, b): up to `per_direction` images of a taken for b, then of b taken for a."""
    chosen = []
    for pair in pairs:
        for true, predicted in ((pair["a"], pair["b"]), (pair["b"], pair["a"])):
            hits = ((predictions.labels == true) & (predictions.predictions == predicted)).nonzero().flatten()
            order = predictions.confidence[hits].argsort(descending=True)
            chosen.append(hits[order][:per_direction])
    index = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
    return _gallery(predictions, index, path, "Misclassified images of the most confused pairs", columns=per_direction)


def _gallery(
    predictions: Predictions, index: torch.Tensor, path: Path, title: str, columns: int = 8, caption=None
) -> Path:
    """The images at `index`, each titled by `caption(i)` (default: its true and predicted class)."""
    count = len(index)
    rows = max(1, -(-count // columns))
    fig = _figure(1.45 * columns, 1.75 * rows + 0.5)
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= count:
            ax.axis("off")
            continue
        i = int(index[k])
        _image(ax, predictions.images[i])
        ax.set_title(caption(i) if caption else _true_and_predicted(predictions, i), fontsize=7)
    if count == 0:
        axes.flat[0].text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _true_and_predicted(predictions: Predictions, i: int) -> str:
    true, guess = predictions.classes[int(predictions.labels[i])], predictions.classes[int(predictions.predictions[i])]
    return f"true {true}\npred {guess} {100 * float(predictions.confidence[i]):.0f}%"


def plot_label_issues(predictions: Predictions, index: torch.Tensor, suggested: torch.Tensor, path: Path) -> Path:
    """The images a label audit flagged, most likely wrong first: each with its given label and the class
    the out-of-sample model gives it, for a person to judge."""
    p = predictions.probabilities
    caption = lambda i: (
        f"given {predictions.classes[int(predictions.labels[i])]} {100 * float(p[i, predictions.labels[i]]):.0f}%\n"
        f"likely {predictions.classes[int(suggested[i])]} {100 * float(p[i, suggested[i]]):.0f}%"
    )
    title = f"The {len(index)} labels most likely wrong (given label, then the model's class, out of sample)"
    return _gallery(predictions, index, path, title, caption=caption)


def plot_per_class(predictions: Predictions, path: Path) -> Path:
    accuracy = predictions.per_class_accuracy()
    classes = predictions.classes
    order = sorted(range(len(classes)), key=lambda i: accuracy[i])  # weakest first: where to look
    fig = _figure(7, max(3.0, 0.32 * len(classes) + 1))
    ax = fig.subplots()
    bars = ax.barh([classes[i] for i in order], [accuracy[i] for i in order], color="tab:blue")
    if len(classes) <= 40:
        ax.bar_label(bars, fmt="%.1f%%", padding=2, fontsize=8)
    overall = predictions.accuracy
    ax.axvline(overall, color="tab:red", ls="--", lw=1, label=f"overall {overall:.2f}%")
    ax.set(xlim=(0, 105), xlabel="test accuracy (%)", title="Per-class test accuracy (weakest first)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_comparison(runs: dict[str, list[dict]], path: Path, title: str, metric: str = "test_acc") -> Path:
    """Several runs' curves on one figure: `metric` solid, training accuracy dashed in the same colour."""
    fig = _figure(9, 5)
    ax = fig.subplots()
    for k, (name, rows) in enumerate(runs.items()):
        colour = f"C{k % 10}"
        epochs = [r["epoch"] for r in rows]
        ax.plot(epochs, [r[metric] for r in rows], "o-", ms=3, color=colour, label=f"{name} ({metric.split('_')[0]})")
        ax.plot(epochs, [r["train_acc"] for r in rows], "--", lw=1, color=colour, alpha=0.7, label=f"{name} (train)")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    _integer_epochs(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def make_run_plots(run: RunRecord, predictions: Predictions, weights=None, temperature: float = 1.0) -> list[Path]:
    """All five run figures into the run folder, confusion.json (the matrix as numbers, for reports) and
    classification.json (metrics.classification_metrics, with the reliability diagram's bins after the run's
    `temperature`), from `predictions` of the model whose `weights` (openrun.Weights) they name."""
    from .evaluate import most_confused
    from .metrics import classification_metrics, expected_calibration_error, reliability_bins
    from .runs import atomic_write_json

    logits = predictions.probabilities.clamp_min(1e-12).log()  # softmax of these is the probabilities again
    calibrated = logits / temperature
    classification = classification_metrics(logits, predictions.labels, predictions.classes)
    classification |= {
        "temperature": temperature,
        "ece_calibrated": expected_calibration_error(calibrated, predictions.labels),
        "reliability": reliability_bins(calibrated, predictions.labels),
        "reliability_raw": reliability_bins(logits, predictions.labels),
        "weights": weights.describe() if weights is not None else None,
    }
    atomic_write_json(run.path / "classification.json", classification)

    matrix = predictions.confusion()
    named = f" ({weights.describe()})" if weights is not None else ""
    atomic_write_json(
        run.path / "confusion.json",
        {
            "classes": predictions.classes,
            "matrix": matrix.tolist(),
            "accuracy": predictions.accuracy,
            "per_class_acc": predictions.per_class_accuracy(),
            "most_confused": most_confused(matrix, 5),
            "weights": weights.describe() if weights is not None else None,
        },
    )
    right = f"{predictions.accuracy:.2f}% of {len(predictions.labels)} test images right"
    return [
        plot_curves(run, run.path / "curves.png"),
        plot_confusion(predictions, run.path / "confusion.png", title=f"Confusion matrix{named}: {right}"),
        plot_errors(
            predictions, run.path / "errors.png", title=f"The most confident mistakes on the test split{named}"
        ),
        plot_per_class(predictions, run.path / "per_class.png"),
        plot_reliability(classification, run.path / "reliability.png", title=f"Reliability{named}"),
    ]


def plot_reliability(classification: dict, path: Path, title: str = "") -> Path:
    """The reliability diagram: accuracy against confidence per bin, raw and (if the run has one) after
    temperature scaling; the gap to the diagonal, weighted by the bins' counts, is the ECE."""
    fig = _figure(5.5, 4.2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 100], color="0.6", linestyle=":", label="perfect calibration")
    curves = [("reliability_raw", f"raw, ECE {classification['ece']:.2f}%", "C3")]
    if classification["temperature"] != 1.0:
        curves.append(
            (
                "reliability",
                f"T = {classification['temperature']:.3g}, ECE {classification['ece_calibrated']:.2f}%",
                "C0",
            )
        )
    for key, label, colour in curves:
        points = [(b["confidence"] / 100, b["accuracy"]) for b in classification[key] if b["count"]]
        ax.plot(*zip(*points), marker="o", color=colour, label=label)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy (%) of the images at that confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100)
    ax.set_title(title or "Reliability", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


class PlotWriter:
    """A training callback: the four run figures, drawn once training ends from the weights the run reports
    (openrun: best.pt when chosen on a validation split, else the last)."""

    def __init__(self, run_dir: Path, data):
        self.run_dir, self.data = Path(run_dir), data

    def on_train_end(self, state, summary: dict) -> None:
        from .analysis import read_run
        from .openrun import load_run

        run = load_run(self.run_dir, device=state.device)
        make_run_plots(read_run(self.run_dir), run.test_predictions(self.data), run.weights, run.temperature)


def plot_lr_find(found, path: Path, title: str = "") -> Path:
    """The learning-rate finder's curve (lrfind.LRFinding): each step's loss and the smoothed one against the
    rate on a log axis, with each rule's suggestion marked."""
    fig = _figure(6.5, 4)
    ax = fig.add_subplot()
    ax.plot(found.rates, found.losses, color="0.8", linewidth=0.8, label="batch loss")
    ax.plot(found.rates, found.smoothed, color="C0", label="smoothed")
    for (rule, rate), colour in zip(found.suggestions.items(), ("C3", "C2", "C1")):
        ax.axvline(rate, color=colour, linestyle="--" if rule != "valley" else "-", label=f"{rule}: {rate:.3g}")
    ax.set_xscale("log")
    low, high = min(found.smoothed), max(found.smoothed[: max(1, len(found.smoothed) // 10)])
    ax.set_ylim(low - 0.1 * (high - low + 1e-3), high + 0.5 * (high - low + 1e-3))  # the part worth reading
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title or "learning-rate sweep")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_duplicate_pairs(
    images_a: torch.Tensor, images_b: torch.Tensor, captions: list[str], path: Path, title: str, columns: int = 4
) -> Path:
    """Pairs side by side (a | b), a caption under each: for a person to judge whether they are one image."""
    rows = max(1, -(-len(captions) // columns))
    fig = _figure(2.3 * columns, 1.45 * rows + 0.4)
    grid = fig.add_gridspec(rows, 2 * columns, wspace=0.02)
    for k, caption in enumerate(captions):
        r, c = divmod(k, columns)
        left, right = fig.add_subplot(grid[r, 2 * c]), fig.add_subplot(grid[r, 2 * c + 1])
        _image(left, images_a[k])
        _image(right, images_b[k])
        left.set_title(caption, fontsize=6, loc="left")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_robustness(result: dict, path: Path, title: str = "") -> Path:
    """Accuracy against severity, a line per corruption, with the clean accuracy and the mean."""
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    severities = list(range(0, len(result["mean_by_severity"]) + 1))
    for name, accs in result["table"].items():
        ax.plot(severities, [result["clean_acc"], *accs], marker=".", linewidth=1, label=name)
    ax.plot(severities, [result["clean_acc"], *result["mean_by_severity"]], color="black", linewidth=2.5, label="mean")
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(severities)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    ax.set_title(
        title
        or f"accuracy under corruption: mean {result['mean_corruption_acc']:.1f}% (clean {result['clean_acc']:.1f}%)",
        fontsize=9,
    )
    return _save(fig, path)
