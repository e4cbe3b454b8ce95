"""The commands that use a trained run: evaluate, predict, inspect, export, plot, confusion, diagnose, report,
robustness and audit's model features. Each opens the run one way (openrun.load_run, with --weights),
calls the library and prints; every one says which weights it used."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import CnnlabError, UsageError
from .names import shown


def _open(args, which: str | None = None):
    from .openrun import load_run

    device = getattr(args, "device", "cpu")
    if device != "cpu":
        from .device import resolve_device

        device = resolve_device(device)
    return load_run(args.run if which is None else which, weights=getattr(args, "weights", "auto"), device=device)


def _data(args, run):
    """--data when given (loaded through the decode cache), else the run's own data."""
    from .data import load_dataset

    if args.data is None:
        if args.labels:
            raise UsageError(
                "--labels goes with --data (the images it labels); give both, or neither for the run's own"
            )
        return run.dataset()
    size = args.image_size or run.image_size
    return run.dataset(
        load_dataset(args.data, root=args.data_root, image_size=size, mirror=args.mirror, labels=args.labels)
    )


def cmd_evaluate(args) -> int:
    run = _open(args)
    data = _data(args, run)
    report = run.evaluate(
        data, tta=args.tta, exclude_duplicates=args.exclude_duplicates, exclude_label_issues=args.exclude_label_issues
    )
    if args.json:
        print(json.dumps(report))
        return 0
    tta = " with test-time augmentation" if args.tta else ""
    print(
        f"{shown(run.folder or run.weights.file)}, {run.weights.describe()}: "
        f"test accuracy {report['test_acc']:.2f}%{tta} on {report['test_images']} images "
        f"(loss {report['test_loss']:.4f})"
    )
    for key, what in (("duplicate_free", "duplicated in train"), ("label_issue_free", "likely mislabelled")):
        if key in report:
            free = report[key]
            print(
                f"  without the {free['excluded']} test images {what}: {free['test_acc']:.2f}% on "
                f"{free['test_images']} images (on those: {free['acc_on_excluded']:.2f}%)"
            )
    print(classification_table(report["metrics"]))
    calibrated = f", {report['ece_calibrated']:.2f}% at temperature {report['temperature']:.3f}"
    print(
        f"  balanced accuracy {report['metrics']['balanced_acc']:.2f}%, top-5 accuracy "
        f"{report['metrics']['top5_acc']:.2f}%, calibration error (ECE, 15 bins) {report['metrics']['ece']:.2f}%"
        + (calibrated if report["temperature_fitted"] else " (no temperature was fitted for these weights)")
    )
    return 0


def classification_table(metrics: dict) -> str:
    """scikit-learn's classification_report layout: precision, recall, F1 (percent) and support per class,
    then the macro and weighted averages."""
    rows = [(name, m["precision"], m["recall"], m["f1"], m["support"]) for name, m in metrics["per_class"].items()]
    total = sum(r[4] for r in rows)
    rows += [
        (f"{kind} avg", *(metrics[kind][k] for k in ("precision", "recall", "f1")), total)
        for kind in ("macro", "weighted")
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"  {'':<{width}}  precision  recall      f1  support"]
    for name, precision, recall, f1, support in rows:
        lines.append(f"  {name:<{width}}  {precision:8.2f}%  {recall:6.2f}%  {f1:6.2f}%  {support:7d}")
    return "\n".join(lines)


def cmd_predict(args) -> int:
    from .predict import predict_files

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1 (got {args.top_k})")
    run = _open(args)
    results = predict_files(run, args.paths, top_k=args.top_k, tta=args.tta, min_confidence=args.min_confidence)
    failed = [r for r in results if r.error]
    skipped = [r for r in results if r.skipped]
    if not args.json:
        print(
            f"weights: {shown(run.weights.file)} (epoch {run.weights.epoch}"
            + (f", chosen on {run.weights.chosen_on})" if run.weights.chosen_on else ")")
            + (f"; probabilities at temperature {run.temperature:.3f}" if run.fitted_temperature else "")
        )
    for r in results:
        if r.error:
            print(f"cnnlab predict: error: {shown(' '.join(r.error.split()))}", file=sys.stderr)
        if args.json:
            print(json.dumps({**r.to_dict(), "weights": run.weights.describe()}), flush=True)
        elif not (r.error or r.skipped):
            answer = f"unknown (below {100 * args.min_confidence:.1f}%)  " if r.unknown else ""
            print(f"{shown(r.image)}  {answer}" + "  ".join(f"{c} {100 * p:.1f}%" for c, p in r.top))
    if skipped and not args.json:
        print(
            f"cnnlab predict: note: {len(skipped)} file(s) in the folders given are not images and were skipped "
            f"(first: {shown(skipped[0].image)})",
            file=sys.stderr,
        )
    if failed and len(results) - len(skipped) > 1:
        print(
            f"cnnlab predict: {len(failed)} of {len(results) - len(skipped)} files could not be read (named above); "
            "the others were predicted",
            file=sys.stderr,
        )
    return 1 if failed else 0


def cmd_inspect(args) -> int:
    import torch

    from .inspect import inspect_model
    from .predict import load_images

    run = _open(args)
    images, labels, names = [], [], []
    if args.image:
        loaded, kept, failed = load_images([Path(f) for f in args.image], run.image_size)
        if failed:
            raise CnnlabError(failed[0].error)
        images.append(loaded)
        labels += [None] * len(kept)
        names += [str(f) for f in kept]
    if args.test_index or not args.image:
        data = _data(args, run)
        indices = args.test_index or _one_per_class(data)
        bad = [i for i in indices if not 0 <= i < len(data.test_labels)]
        if bad:
            raise UsageError(
                f"--test-index {bad[0]} is out of range: the test split has {len(data.test_labels)} images "
                f"(0 to {len(data.test_labels) - 1})"
            )
        images.append(data.test_images[indices])
        labels += [int(data.test_labels[i]) for i in indices]
        names += [f"test #{i}" for i in indices]
    out_dir = Path(args.out_dir) if args.out_dir else (run.folder or run.weights.file.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = inspect_model(
        run.model.cpu(),
        torch.cat(images),
        labels,
        names,
        run.classes,
        run.checkpoint["mean"],
        run.checkpoint["std"],
        out_dir,
        grayscale=run.grayscale,
    )
    print(f"weights: {run.weights.describe()}")
    print(result.summary())
    for item in result.images:
        truth = f", true {item['label']}" if item["label"] else ""
        print(f"  {shown(item['image'])}: predicted {item['predicted']} ({100 * item['confidence']:.1f}%){truth}")
    for figure in result.figures:
        print(figure)
    _refresh_report(out_dir)
    return 0


def _one_per_class(data) -> list[int]:
    """The first test image of four classes spread over the class list (test folders are often sorted)."""
    spread = sorted({k * data.num_classes // 4 for k in range(4)})
    return [int((data.test_labels == c).nonzero()[0]) for c in spread if (data.test_labels == c).any()]


def _refresh_report(folder: Path, quiet: bool = False) -> None:
    """Keep an existing report of the run current after a command added to the folder."""
    if (folder / "report.html").is_file() and (folder / "metrics.jsonl").is_file():
        from .report import write_report

        written = write_report([folder], folder / "report.html")
        if not quiet:
            print(f"{written} (updated)")


def cmd_export(args) -> int:
    from .export import check_export, export_model

    run = _open(args)
    default = (run.folder or run.weights.file.parent) / (
        "model.onnx" if args.format == "onnx" else "model.torchscript.pt"
    )
    out = export_model(run, args.format, Path(args.out) if args.out else default, args.input_type)
    print(
        f"{out}: {args.format} of {run.weights.describe()}, input images [N, 3, {run.image_size}, {run.image_size}] "
        f"{args.input_type if args.format == 'onnx' else 'uint8 or float'}, outputs logits and probabilities"
    )
    difference = check_export(run, out, args.input_type) if args.format == "onnx" else None
    if difference is not None:
        print(f"checked with ONNX Runtime on 8 random images: max |logit difference| from PyTorch {difference:.2e}")
    return 0


def _predictions(args):
    """The opened run, its records and its test predictions, on --data or the run's own data."""
    run = _open(args)
    return run, run.record(), run.test_predictions(_data(args, run))


def cmd_plot(args) -> int:
    from .plots import make_run_plots

    run, record, predictions = _predictions(args)
    print(f"figures of {run.weights.describe()}:")
    for path in make_run_plots(record, predictions, run.weights, run.temperature):
        print(path)
    return 0


def cmd_diagnose(args) -> int:
    from .analysis import read_run
    from .diagnose import diagnose

    record = read_run(args.run)  # the curves first: a folder that is not a run is told so by what it lacks
    run = _open(args)
    result = diagnose(record)
    result.notes.append(f"the run reports {run.weights.describe()}")
    print(json.dumps({**result.to_dict(), "weights": run.weights.to_dict()}) if args.json else result.format())
    return 0


def cmd_confusion(args) -> int:
    from .evaluate import most_confused
    from .plots import plot_pair_gallery

    if args.top < 1:
        raise UsageError(f"--top must be at least 1 (got {args.top})")
    run, record, predictions = _predictions(args)
    matrix, classes = predictions.confusion(), predictions.classes
    pairs = most_confused(matrix, args.top)
    gallery = plot_pair_gallery(predictions, pairs, record.path / "confused_pairs.png")
    named = [
        {
            "classes": [classes[p["a"]], classes[p["b"]]],
            "total": p["total"],
            f"{classes[p['a']]} as {classes[p['b']]}": p["a_as_b"],
            f"{classes[p['b']]} as {classes[p['a']]}": p["b_as_a"],
        }
        for p in pairs
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "run": str(record.path),
                    "weights": run.weights.to_dict(),
                    "accuracy": predictions.accuracy,
                    "classes": classes,
                    "matrix": matrix.tolist(),
                    "most_confused": named,
                    "gallery": str(gallery),
                }
            )
        )
        return 0
    print(
        f"confusion of {run.weights.describe()} on {int(matrix.sum())} test images ({predictions.accuracy:.2f}% right)"
    )
    print(format_matrix(matrix, classes))
    print(f"\nmost confused pairs (of {int(matrix.sum() - matrix.trace())} errors on {int(matrix.sum())} test images):")
    for k, p in enumerate(pairs, start=1):
        a, b = classes[p["a"]], classes[p["b"]]
        print(
            f"  {k}. {a} / {b}: {p['total']} errors ({a} taken for {b} {p['a_as_b']}, {b} taken for {a} {p['b_as_a']})"
        )
    print(f"gallery of their misclassified images: {gallery}")
    return 0


def format_matrix(matrix, classes: list[str]) -> str:
    """Rows true, columns predicted, as counts; long class names are cut to keep columns narrow."""
    short = [c[:7] for c in classes]
    width = max(5, max(len(str(int(v))) for v in matrix.flatten()) + 1, max(len(s) for s in short) + 1)
    label = max(len(c) for c in classes)
    lines = [" " * (label + 2) + "".join(f"{s:>{width}}" for s in short) + "   <- predicted"]
    for i, name in enumerate(classes):
        right = 100.0 * int(matrix[i, i]) / max(1, int(matrix[i].sum()))
        lines.append(
            f"{name:>{label}}  " + "".join(f"{int(v):>{width}}" for v in matrix[i]) + f"   {right:5.1f}% right"
        )
    lines.append(f"{'(true)':>{label}}")
    return "\n".join(lines)


def cmd_report(args) -> int:
    from .data import load_dataset
    from .report import write_report

    sweeps = [r for r in args.runs if (Path(r) / "sweep.json").is_file()]
    if sweeps:
        if len(args.runs) > 1:
            raise UsageError(f"{shown(sweeps[0])} is a sweep folder: report it on its own (cnnlab report SWEEP)")
        from .sweep_report import write_sweep_report
        from .sweep_results import format_summary, read_sweep

        spec, results = read_sweep(args.runs[0])  # as it stands: a partial sweep too
        print(format_summary(results))
        print(write_sweep_report(args.runs[0], args.out, (spec, results)))
        return 0
    data = (
        (
            lambda size: load_dataset(
                args.data,
                root=args.data_root,
                image_size=args.image_size or size,
                mirror=args.mirror,
                labels=args.labels,
            )
        )
        if args.data
        else None
    )
    print(write_report(args.runs, out=args.out, data=data, weights=args.weights))
    return 0


def cmd_robustness(args) -> int:
    from .robustness import CORRUPTIONS, format_table, measure_robustness

    names = None
    if args.corruptions:
        names = [n.strip() for n in args.corruptions.split(",") if n.strip()]
        unknown = [n for n in names if n not in CORRUPTIONS]
        if unknown or not names:
            raise UsageError(f"unknown corruption '{(unknown or [''])[0]}': choose from {', '.join(CORRUPTIONS)}")
    run = _open(args)
    if run.folder is None:
        raise CnnlabError(f"{shown(args.run)}: robustness writes into a run folder; pass the run's folder")
    show = (
        None
        if args.json or not sys.stderr.isatty()
        else (lambda name, severity, acc: print(f"  {name} severity {severity}: {acc:.2f}%", file=sys.stderr))
    )
    result = measure_robustness(run, _data(args, run), names, args.seed, show)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"weights: {run.weights.describe()}")
        for name, why in result["skipped"].items():
            print(f"{name} skipped: {why}")
        print(format_table(result))
        print(f"table (robustness.json) and plot (robustness.png) in {run.folder}")
    _refresh_report(run.folder, quiet=args.json)
    return 0
