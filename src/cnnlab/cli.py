"""`cnnlab <command>`: argument parsing and error messages only; every command calls the library.

Errors a user can cause become one line on stderr: exit code 2 for usage errors, 1 for the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import CnnlabError, CnnlabWarning, UsageError
from .names import shown


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (not the usage block plus a line)."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def _bounded_int(low: int, high: int):
    """An argparse type: an integer from low to high."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; give an integer from {low} to {high}")
        return value

    return parse


def _data_options(p: argparse.ArgumentParser, default: str | None = "cifar10", image_size: bool = True) -> None:
    p.add_argument("--data", default=default, help="cifar10, cifar100, or a path: CIFAR archive/folder, image folder, .tar[.gz] or .zip of one"
                   + (" (default: %(default)s)" if default else " (default: the run's own data)"))
    p.add_argument("--data-root", default="data", help="where cifar10/cifar100 are downloaded (default: %(default)s)")
    p.add_argument("--mirror", help="base URL to download the CIFAR archives from (or $CNNLAB_CIFAR_MIRROR)")
    if image_size:  # training takes it as a recipe field
        p.add_argument("--image-size", type=int, help="images of other sizes are resized to this (default 32)")


def _train_options(t: argparse.ArgumentParser, epochs_help: str | None = None, data_default: str | None = "cifar10") -> None:
    """The training flags: --recipe, the data, and one flag per recipe field and model option, made from their
    declarations (recipe.py, models/__init__.py)."""
    from dataclasses import fields

    from .models import MODELS
    from .recipe import Recipe, declaration, flag, in_flags, metavar

    t.add_argument("--recipe", help="a shipped recipe name or a TOML file (default: seed)")
    _data_options(t, default=data_default, image_size=False)
    t.add_argument("--runs-dir", default="runs", help="parent folder of run folders (default: %(default)s)")
    t.add_argument("--no-progress", action="store_true", help="print nothing but errors")
    groups = {}
    for f in fields(Recipe):
        knob = declaration(f)
        if not knob.cli:
            continue
        if knob.group not in groups:
            groups[knob.group] = t.add_argument_group(f"recipe overrides: {knob.group} (each replaces the recipe's field)")
        help_text = (epochs_help if f.name == "epochs" and epochs_help else in_flags(knob.help)).replace("%", "%%")
        if f.type == "bool":
            groups[knob.group].add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            groups[knob.group].add_argument(flag(f.name), type=kind, metavar=metavar(f), help=help_text)
    options = t.add_argument_group("model options (only for the models that have them: cnnlab models)")
    for key, option in {k: o for spec in MODELS.values() for k, o in spec.options.items()}.items():
        options.add_argument(flag(key), dest=f"model_option_{key}", action=argparse.BooleanOptionalAction, default=None,
                             help=option.help)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnlab", description="Train convolutional networks on CIFAR-10-class data, end to end.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    t = commands.add_parser("train", help="train a model with a recipe; writes a run folder")
    _train_options(t, data_default=None)
    t.add_argument("--resume", metavar="RUN", help="continue a stopped or killed run from its last checkpoint, exactly")
    t.add_argument("--name", help="run folder name (default: generated; an existing run is never overwritten)")
    t.add_argument("--no-plots", action="store_true", help="skip the figures drawn at the end of the run")
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars (needs cnnlab[tensorboard])")

    a = commands.add_parser("ablate", help="the chapter's ablations: bn (Exercise 19.5.2), recipe (the 'poor recipe' "
                            "claim), regularizers (each one added to the seed recipe), speedrun (each technique removed)")
    a.add_argument("ablation", choices=["bn", "recipe", "regularizers", "speedrun"])
    _train_options(a, epochs_help="epochs per variant (default: 15)")

    p = commands.add_parser("plot", help="draw a run's figures: curves, confusion, errors, per-class")
    p.add_argument("run", help="a run folder")
    _data_options(p, default=None)

    g = commands.add_parser("diagnose", help="underfitting, good fit or overfitting, from a run's curves, with remedies")
    g.add_argument("run", help="a run folder")
    g.add_argument("--json", action="store_true", help="print one JSON object")

    c = commands.add_parser("confusion", help="confusion matrix, most confused pairs and their images")
    c.add_argument("run", help="a run folder")
    c.add_argument("--top", type=int, default=3, help="how many confused pairs (default: %(default)s)")
    _data_options(c, default=None)
    c.add_argument("--json", action="store_true", help="print one JSON object")

    r = commands.add_parser("report", help="one self-contained HTML page for a run, or a comparison of several")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    r.add_argument("--out", help="output file (default: RUN/report.html for one run, else report.html here)")
    _data_options(r, default=None)

    e = commands.add_parser("evaluate", help="test accuracy, overall and per class, of a run or checkpoint")
    e.add_argument("run", help="a run folder (its best.pt) or a checkpoint file")
    _data_options(e, default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--tta", action="store_true", help="test-time augmentation: average over flips and one-pixel shifts")
    e.add_argument("--exclude-duplicates", metavar="AUDIT",
                   help="also report accuracy without the test images an audit found duplicated in train")
    e.add_argument("--json", action="store_true", help="print one JSON object")

    au = commands.add_parser("audit", help="exact and near-duplicate images between and within the splits (leaks)")
    _data_options(au)
    au.add_argument("--model-run", metavar="RUN", help="compare a trained run's penultimate features (default: "
                    "8x8 pixel features)")
    au.add_argument("--threshold", type=float, help="cosine similarity counted as a near duplicate "
                    "(default: 0.95 for pixel features, 0.99 for a model's; see BENCHMARKS.md)")
    au.add_argument("--out", help="output folder (default: audits/<data name>[-model]; never overwritten)")
    au.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    rb = commands.add_parser("robustness", help="test accuracy under generated CIFAR-10-C-style corruptions")
    rb.add_argument("run", help="a run folder (its last.pt)")
    _data_options(rb, default=None)
    rb.add_argument("--corruptions", help="comma-separated subset (default: all of them)")
    rb.add_argument("--seed", type=_bounded_int(0, 2 ** 31 - 1), default=0,
                    help="seed of the corruption draws (default: %(default)s)")
    rb.add_argument("--device", default="auto")
    rb.add_argument("--json", action="store_true", help="print one JSON object")

    d = commands.add_parser("data", help="download a dataset, or describe one")
    d.add_argument("action", choices=["download", "info", "stats"])
    _data_options(d)
    d.add_argument("--md5", help="expected md5 of the archive, for a private mirror serving another build")

    b = commands.add_parser("bench", help="training throughput of the chapter's recipe, variants side by side")
    b.add_argument("--data", default="cifar10", help="data source (default: %(default)s)")
    b.add_argument("--variants", help="comma-separated variant names (default: all; first is the baseline)")
    b.add_argument("--repeats", type=int, default=3, help="interleaved repeats per variant (default: %(default)s)")
    b.add_argument("--steps", type=int, default=40, help="timed training steps per measurement (default: %(default)s)")
    b.add_argument("--warmup", type=int, default=8, help="untimed steps first (default: %(default)s)")
    b.add_argument("--json", dest="json_out", help="also write the full result as JSON to this file")
    b.add_argument("--list", action="store_true", help="list the variants and exit")

    i = commands.add_parser("inspect", help="first-layer filters, feature maps and Grad-CAM evidence, as PNGs in the run")
    i.add_argument("run", help="a run folder (its last.pt) or a checkpoint file")
    i.add_argument("--image", action="append", default=[], metavar="FILE", help="an image of your own (repeatable)")
    i.add_argument("--test-index", action="append", type=int, default=[], metavar="I",
                   help="a test image by index (repeatable; default: one each of four classes)")
    i.add_argument("--out-dir", help="where the PNGs go (default: the run folder)")
    _data_options(i, default=None)

    pr = commands.add_parser("predict", help="top-k classes for image files or folders")
    pr.add_argument("run", help="a run folder (its best.pt) or a checkpoint file")
    pr.add_argument("paths", nargs="+", metavar="IMAGE_OR_FOLDER")
    pr.add_argument("--top-k", type=int, default=3, help="classes shown per image (default: %(default)s)")
    pr.add_argument("--tta", action="store_true", help="test-time augmentation: average over flips and one-pixel shifts")
    pr.add_argument("--json", action="store_true", help="one JSON object per image (JSON lines)")
    pr.add_argument("--device", default="cpu")

    x = commands.add_parser("export", help="ONNX or TorchScript, normalisation included, dynamic batch")
    x.add_argument("run", help="a run folder (its best.pt) or a checkpoint file")
    x.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    x.add_argument("--out", help="output file (default: model.onnx or model.torchscript.pt in the run folder)")
    x.add_argument("--input-type", default="uint8", choices=["uint8", "float32"],
                   help="ONNX input: uint8 0-255 or float32 0-1 (TorchScript takes both; default: %(default)s)")

    commands.add_parser("recipes", help="list the shipped recipes")
    commands.add_parser("models", help="list the models by name")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Whatever the locale, a character the terminal cannot show is written as an escape, never a crash.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    _warnings_as_lines(f"cnnlab {args.command}")
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at exit
        return code
    except BrokenPipeError:  # output piped into `head` and closed: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 0
    except CnnlabError as e:
        message = shown(" ".join(_in_flags(e).split()))  # always exactly one line
        print(f"cnnlab {args.command}: error: {message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"cnnlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from .stopping import Interrupted

        if not isinstance(e, Interrupted):
            raise
        where = f"; continue with: cnnlab train --resume {shown(e.run_dir)}" if e.run_dir else ""
        print(f"cnnlab {args.command}: {e}, checkpoint written{where}", file=sys.stderr)
        return e.exit_code


def _in_flags(error: CnnlabError) -> str:
    """The library's message with the parameters it names written as this CLI's flags (val_split: --val-split)."""
    import re

    from .recipe import flag

    message = str(error)
    for name in error.parameters:
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flag(name), message, count=1)
    return message


def _warnings_as_lines(prefix: str) -> None:
    """Our own warnings (CnnlabWarning) as one line on stderr, like our errors; other warnings as usual."""
    import warnings

    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CnnlabWarning):
            print(f"{prefix}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line


# ---------------------------------------------------------------------------------------------


def _recipe(args):
    """The recipe the flags ask for: --recipe with every field flag given on top."""
    from .recipe import Recipe, load_recipe

    fields = Recipe.__dataclass_fields__
    overrides = {k: v for k, v in vars(args).items() if k in fields and k != "name" and v is not None}
    options = {k[len("model_option_"):]: v for k, v in vars(args).items() if k.startswith("model_option_") and v is not None}
    if options:
        overrides["model_options"] = options
    return load_recipe(args.recipe or "seed", overrides)


def cmd_train(args) -> int:
    if args.resume:
        from .recipe import Recipe, flag
        from .train import resume

        given = [flag(k.removeprefix("model_option_")) for k, v in vars(args).items() if v is not None and (
                 k in Recipe.__dataclass_fields__ or k.startswith("model_option_") or k in ("recipe", "name"))]
        if given:
            raise UsageError(f"--resume continues the run with its own recipe; drop {', '.join(given)}")
        resume(args.resume, args.data, data_root=args.data_root, progress=not args.no_progress, plots=not args.no_plots,
               tensorboard=args.tensorboard)
        return 0
    args.data = args.data or "cifar10"
    if args.name is not None:
        from .runs import check_run_name

        check_run_name(args.name)  # before any time is spent on the data
    recipe = _recipe(args)
    from .device import resolve_device
    from .train import train

    resolve_device(recipe.device)  # a --device this machine lacks fails before the data is loaded
    if args.tensorboard:
        from .tensorboard import require_tensorboard

        require_tensorboard()
    train(recipe, _load(args, recipe.image_size), runs_dir=args.runs_dir, name=args.name, progress=not args.no_progress,
          plots=not args.no_plots, tensorboard=args.tensorboard)
    return 0


def cmd_ablate(args) -> int:
    from .ablate import ABLATIONS, format_table, run_ablation

    args.recipe = args.recipe or ABLATIONS[args.ablation].recipe
    recipe = _recipe(args)
    comparison = run_ablation(args.ablation, recipe, _load(args, recipe.image_size), epochs=args.epochs,
                              runs_dir=args.runs_dir, progress=not args.no_progress)
    print(format_table(comparison))
    print(f"runs, table (ablation.md, ablation.json) and plot (ablation.png) in {comparison['folder']}")
    return 0


def _run_and_predictions(args):
    """A run folder's records and its final model's test predictions, on --data or the run's own data."""
    from .analysis import read_run, run_predictions

    run = read_run(args.run)
    data = None
    if args.data is not None:
        from .runfiles import load_checkpoint, resolve_checkpoint

        image_size = args.image_size or load_checkpoint(resolve_checkpoint(run.path, "last.pt"))["image_size"]
        data = _load(args, image_size)
    return run, run_predictions(run, data)


def cmd_plot(args) -> int:
    from .plots import make_run_plots

    run, predictions = _run_and_predictions(args)
    for path in make_run_plots(run, predictions):
        print(path)
    return 0


def cmd_diagnose(args) -> int:
    from .analysis import read_run
    from .diagnose import diagnose

    result = diagnose(read_run(args.run))
    print(json.dumps(result.to_dict()) if args.json else result.format())
    return 0


def cmd_confusion(args) -> int:
    from .evaluate import most_confused
    from .plots import plot_pair_gallery

    if args.top < 1:
        raise UsageError(f"--top must be at least 1 (got {args.top})")
    run, predictions = _run_and_predictions(args)
    matrix, classes = predictions.confusion(), predictions.classes
    pairs = most_confused(matrix, args.top)
    gallery = plot_pair_gallery(predictions, pairs, run.path / "confused_pairs.png")
    named = [{"classes": [classes[p["a"]], classes[p["b"]]], "total": p["total"],
              f"{classes[p['a']]} as {classes[p['b']]}": p["a_as_b"], f"{classes[p['b']]} as {classes[p['a']]}": p["b_as_a"]}
             for p in pairs]
    if args.json:
        print(json.dumps({"run": str(run.path), "accuracy": predictions.accuracy, "classes": classes,
                          "matrix": matrix.tolist(), "most_confused": named, "gallery": str(gallery)}))
        return 0
    print(format_matrix(matrix, classes))
    print(f"\nmost confused pairs (of {int(matrix.sum() - matrix.trace())} errors on {int(matrix.sum())} test images):")
    for k, p in enumerate(pairs, start=1):
        a, b = classes[p["a"]], classes[p["b"]]
        print(f"  {k}. {a} / {b}: {p['total']} errors ({a} taken for {b} {p['a_as_b']}, {b} taken for {a} {p['b_as_a']})")
    print(f"gallery of their misclassified images: {gallery}")
    return 0


def format_matrix(matrix, classes: list[str]) -> str:
    """Rows true, columns predicted, as counts; long class names are cut to keep columns narrow."""
    short = [c[:7] for c in classes]
    width = max(5, max(len(str(int(v))) for v in matrix.flatten()) + 1, max(len(s) for s in short) + 1)
    label = max(len(c) for c in classes)
    head = " " * (label + 2) + "".join(f"{s:>{width}}" for s in short) + "   <- predicted"
    lines = [head]
    for i, name in enumerate(classes):
        lines.append(f"{name:>{label}}  " + "".join(f"{int(v):>{width}}" for v in matrix[i]) + f"   {100.0 * int(matrix[i, i]) / max(1, int(matrix[i].sum())):5.1f}% right")
    lines.append(f"{'(true)':>{label}}")
    return "\n".join(lines)


def cmd_report(args) -> int:
    from .report import write_report

    out = write_report(args.runs, out=args.out, data=(lambda size: _load(args, args.image_size or size)) if args.data else None)
    print(out)
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from .device import resolve_device
    from .evaluate import EVAL_BATCH_SIZE, evaluate, per_class_accuracy
    from .loader import Loader, Normalizer
    from .runfiles import load_checkpoint, model_from_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(args.run)
    checkpoint = load_checkpoint(path)
    if args.data is None:  # default: the data the run was trained on
        from .runfiles import recorded_source

        args.data = recorded_source(path.parent)
    args.image_size = args.image_size or checkpoint["image_size"]
    data = _load(args, args.image_size)
    if data.classes != checkpoint["classes"]:
        raise CnnlabError(f"{path} was trained on classes {checkpoint['classes']}, but {args.data} has {data.classes}; "
                          "evaluate on the data the model was trained for")
    device = resolve_device(args.device)
    model = model_from_checkpoint(checkpoint, path).to(device)
    loader = Loader(data.test_images, data.test_labels, EVAL_BATCH_SIZE, Normalizer(tuple(checkpoint["mean"]), tuple(checkpoint["std"])),
                    device=device)
    audit = None
    if args.exclude_duplicates:
        from .audit import load_audit

        audit = load_audit(args.exclude_duplicates, data)
    with torch.no_grad():
        result = evaluate(model, loader, tta=args.tta)
    per_class = per_class_accuracy(result["predictions"], result["labels"], data.num_classes)
    report = {"checkpoint": str(path), "data": args.data, "tta": args.tta, "test_images": int(result["labels"].numel()),
              "test_acc": result["acc"], "test_loss": result["loss"],
              "per_class_acc": dict(zip(data.classes, per_class))}
    if audit is not None:
        keep = torch.ones(len(result["labels"]), dtype=torch.bool)
        keep[audit["leaked_test"]] = False
        right = result["predictions"] == result["labels"]
        report["duplicate_free"] = {
            "audit": str(args.exclude_duplicates), "excluded": int((~keep).sum()), "test_images": int(keep.sum()),
            "test_acc": 100.0 * float(right[keep].double().mean()) if keep.any() else float("nan"),
            "acc_on_excluded": 100.0 * float(right[~keep].double().mean()) if (~keep).any() else float("nan"),
        }
    if args.json:
        print(json.dumps(report))
    else:
        tta = " with test-time augmentation" if args.tta else ""
        print(f"{path}: test accuracy {result['acc']:.2f}%{tta} on {report['test_images']} images (loss {result['loss']:.4f})")
        if audit is not None:
            free = report["duplicate_free"]
            print(f"  without the {free['excluded']} test images duplicated in train: {free['test_acc']:.2f}% on "
                  f"{free['test_images']} images (on the duplicated ones: {free['acc_on_excluded']:.2f}%)")
        width = max(len(c) for c in data.classes)
        for cls, acc in report["per_class_acc"].items():
            print(f"  {cls:<{width}}  {acc:6.2f}%")
    return 0


def cmd_audit(args) -> int:
    from pathlib import Path

    from .audit import audit, format_audit, model_features, save_audit
    from .runs import claim_run_folder

    if args.threshold is not None and not -1 <= args.threshold <= 1:
        raise UsageError(f"--threshold {args.threshold} is not a cosine similarity; give a number between -1 and 1")
    if args.out and Path(args.out).exists():
        raise CnnlabError(f"{args.out} already exists; choose another --out (audits are never overwritten)")
    space, features = "pixels", None
    if args.model_run:
        from .runfiles import load_checkpoint, model_from_checkpoint, resolve_checkpoint

        path = resolve_checkpoint(args.model_run, "last.pt")
        payload = load_checkpoint(path)
        model = model_from_checkpoint(payload, path)
        args.image_size = args.image_size or payload["image_size"]
        space = "model"
        features = lambda images: model_features(model, images, payload["mean"], payload["std"])
    data = _load(args, args.image_size or 32)
    result = audit(data, space, args.threshold, features)
    stem = Path(str(args.data).rstrip("/")).name.split(".")[0] + ("-model" if args.model_run else "")
    out = claim_run_folder(Path(args.out).parent, Path(args.out).name, stem) if args.out else claim_run_folder("audits", None, stem)
    summary = save_audit(result, data, out, model_run=args.model_run)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "leaked_test"} | {"folder": str(out)}))
    else:
        print(format_audit(summary))
        print(f"pairs (pairs.csv, nearest_train.csv), galleries (gallery.png, gallery_threshold.png) and audit.json in {out}")
    return 0


def cmd_robustness(args) -> int:
    from .analysis import load_run_model, read_run
    from .device import resolve_device
    from .evaluate import EVAL_BATCH_SIZE, evaluate
    from .loader import Loader, Normalizer
    from .plots import plot_robustness
    from .robustness import CORRUPTIONS, format_table, robustness_table
    from .runs import atomic_write_bytes

    names = None
    if args.corruptions:
        names = [n.strip() for n in args.corruptions.split(",") if n.strip()]
        unknown = [n for n in names if n not in CORRUPTIONS]
        if unknown or not names:
            raise UsageError(f"unknown corruption '{(unknown or [''])[0]}': choose from {', '.join(CORRUPTIONS)}")
    from .device import tune_cpu_allocator

    run = read_run(args.run)
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()  # 46 passes over the test set: keep freed batches in the heap
    data = _load(args, args.image_size or 32) if args.data is not None else None
    model, payload, data = load_run_model(run, data, "last.pt", device)
    normalize = Normalizer(tuple(payload["mean"]), tuple(payload["std"]))

    def accuracy_of(model, images, labels):
        return evaluate(model, Loader(images, labels, EVAL_BATCH_SIZE, normalize, device=device))["acc"]

    show = None if args.json or not sys.stderr.isatty() else (
        lambda name, severity, acc: print(f"  {name} severity {severity}: {acc:.2f}%", file=sys.stderr))
    result = robustness_table(model, data.test_images, data.test_labels, accuracy_of, names, args.seed, show)
    result["data"] = data.source
    atomic_write_bytes(run.path / "robustness.json", json.dumps(result, indent=1).encode())
    plot_robustness(result, run.path / "robustness.png")
    if (run.path / "report.html").is_file():  # keep an existing report current
        from .report import write_report

        write_report([run.path], run.path / "report.html")
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
        print(f"table (robustness.json) and plot (robustness.png) in {run.path}")
    return 0


def cmd_data(args) -> int:
    from .splits import channel_stats
    from .download import CIFAR_ARCHIVES, ensure_cifar

    if args.action == "download":
        if args.data not in CIFAR_ARCHIVES:
            raise UsageError(f"'cnnlab data download' fetches {' or '.join(CIFAR_ARCHIVES)}; '{args.data}' is not one of them")
        folder = ensure_cifar(args.data, Path(args.data_root), mirror=args.mirror, md5=args.md5)
        print(f"{args.data} is ready in {folder}")
        return 0
    data = _load(args, args.image_size or 32)
    if args.action == "info":
        info = data.summary()
        counts = lambda labels: [int(c) for c in labels.bincount(minlength=data.num_classes)]
        print(f"source      {info['source']}\nchecksum    {info['checksum']}\nimage size  {info['image_size']}x{info['image_size']}")
        print(f"train       {info['train']} images\ntest        {info['test']} images\nclasses     {data.num_classes}")
        width = max(len(c) for c in data.classes)
        for cls, tr, te in zip(data.classes, counts(data.train_labels), counts(data.test_labels)):
            print(f"  {cls:<{width}}  train {tr:6d}  test {te:6d}")
    else:
        mean, std = channel_stats(data.train_images)
        print(f"training split of {data.source}: {len(data.train_labels)} images")
        print(f"mean  ({', '.join(f'{v:.4f}' for v in mean)})\nstd   ({', '.join(f'{v:.4f}' for v in std)})")
        if data.known_stats:
            kmean, kstd = data.known_stats
            print(f"published constants used for training: mean {kmean}, std {kstd}")
    return 0


def cmd_bench(args) -> int:
    from .bench import DEFAULT_VARIANTS, VARIANTS, format_table, run_bench
    from .runs import atomic_write_json

    if args.list:
        for v in VARIANTS.values():
            print(f"{v.name:<22} {v.description}")
        return 0
    variants = args.variants.split(",") if args.variants else DEFAULT_VARIANTS
    result = run_bench(variants, args.data, repeats=args.repeats, steps=args.steps, warmup=args.warmup)
    print(format_table(result))
    if args.json_out:
        atomic_write_json(Path(args.json_out), result)
    return 0


def _checkpoint(run: str, which: str = "best.pt"):
    from .runfiles import load_checkpoint, model_from_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(run, which)
    payload = load_checkpoint(path)
    return path, payload, model_from_checkpoint(payload, path)


def cmd_inspect(args) -> int:
    import torch

    from .inspect import inspect_model
    from .predict import load_images

    path, checkpoint, model = _checkpoint(args.run, "last.pt")
    images, labels, names = [], [], []
    if args.image:
        loaded, kept, failed = load_images([Path(f) for f in args.image], checkpoint["image_size"])
        if failed:
            raise CnnlabError(failed[0].error)
        images.append(loaded)
        labels += [None] * len(kept)
        names += [str(f) for f in kept]
    if args.test_index or not args.image:
        if args.data is None:
            from .runfiles import recorded_source

            args.data = recorded_source(path.parent)
        data = _load(args, checkpoint["image_size"])
        # Default: the first test image of four classes spread over the class list (test folders are often sorted).
        spread = sorted({k * data.num_classes // 4 for k in range(4)})
        indices = args.test_index or [int((data.test_labels == c).nonzero()[0]) for c in spread if (data.test_labels == c).any()]
        bad = [i for i in indices if not 0 <= i < len(data.test_labels)]
        if bad:
            raise UsageError(f"--test-index {bad[0]} is out of range: the test split has {len(data.test_labels)} images (0 to {len(data.test_labels) - 1})")
        images.append(data.test_images[indices])
        labels += [int(data.test_labels[i]) for i in indices]
        names += [f"test #{i}" for i in indices]
    out_dir = Path(args.out_dir) if args.out_dir else path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    result = inspect_model(model, torch.cat(images), labels, names, checkpoint["classes"], checkpoint["mean"],
                           checkpoint["std"], out_dir)
    print(result.summary())
    for item in result.images:
        truth = f", true {item['label']}" if item["label"] else ""
        print(f"  {item['image']}: predicted {item['predicted']} ({100 * item['confidence']:.1f}%){truth}")
    for figure in result.figures:
        print(figure)
    if (out_dir / "report.html").is_file() and (out_dir / "metrics.jsonl").is_file():
        from .report import write_report

        print(f"{write_report([out_dir])} (updated)")
    return 0


def cmd_predict(args) -> int:
    from .predict import predict_files

    path, checkpoint, model = _checkpoint(args.run)
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1 (got {args.top_k})")
    results = predict_files(model, checkpoint, args.paths, top_k=args.top_k, tta=args.tta, device=args.device)
    failed = [r for r in results if r.error]
    skipped = [r for r in results if r.skipped]
    for r in results:
        if r.error:
            print(f"cnnlab predict: error: {shown(' '.join(r.error.split()))}", file=sys.stderr)
        if args.json:
            print(json.dumps(r.to_dict()), flush=True)
        elif not (r.error or r.skipped):
            print(f"{shown(r.image)}  " + "  ".join(f"{c} {100 * p:.1f}%" for c, p in r.top))
    if skipped and not args.json:
        print(f"cnnlab predict: note: {len(skipped)} file(s) in the folders given are not images and were skipped "
              f"(first: {shown(skipped[0].image)})", file=sys.stderr)
    if failed and len(results) - len(skipped) > 1:
        print(f"cnnlab predict: {len(failed)} of {len(results) - len(skipped)} files could not be read (named above); "
              "the others were predicted", file=sys.stderr)
    return 1 if failed else 0


def cmd_export(args) -> int:
    import torch

    from .export import check_onnx, export_model

    path, checkpoint, model = _checkpoint(args.run)
    default = path.parent / ("model.onnx" if args.format == "onnx" else "model.torchscript.pt")
    out = export_model(model, checkpoint, args.format, Path(args.out) if args.out else default, args.input_type)
    print(f"{out}: {args.format}, input images [N, 3, {checkpoint['image_size']}, {checkpoint['image_size']}] "
          f"{args.input_type if args.format == 'onnx' else 'uint8 or float'}, outputs logits and probabilities")
    if args.format == "onnx":
        generator = torch.Generator().manual_seed(0)
        size = checkpoint["image_size"]
        images = torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=generator)
        from .export import WithNormalization

        with torch.no_grad():
            reference = WithNormalization(model, checkpoint["mean"], checkpoint["std"]).eval()(images)[0]
        feed = images if args.input_type == "uint8" else images.float() / 255
        difference = check_onnx(out, feed, reference)
        if difference is not None:
            print(f"checked with ONNX Runtime on 8 random images: max |logit difference| from PyTorch {difference:.2e}")
    return 0


def cmd_recipes(args) -> int:
    from .recipe import load_recipe, shipped_recipes

    for name in sorted(shipped_recipes()):
        print(f"{name:<14} {load_recipe(name).description}")
    return 0


def cmd_models(args) -> int:
    from .models import MODELS, build_model, count_parameters

    options = lambda spec: (f"; options: {', '.join(f'{k} ({o.default})' for k, o in spec.options.items())}"
                            if spec.options else "")
    for name, spec in sorted(MODELS.items()):
        print(f"{name:<17} {spec.description}{options(spec)}")
    example = "speedrun-48-192-192"
    print(f"{'speedrun-W1-W2-W3':<17} the speedrun net with these stage widths "
          f"({example}: {count_parameters(build_model(example, 10)):,} parameters){options(MODELS['speedrun'])}")
    print(f"{'tv:NAME':<17} a torchvision model by name (needs an importable torchvision)")
    return 0


def _load(args, image_size: int):
    from .data import load_dataset

    return load_dataset(args.data, root=args.data_root, image_size=image_size, mirror=args.mirror)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "data": cmd_data, "recipes": cmd_recipes,
            "models": cmd_models, "bench": cmd_bench, "ablate": cmd_ablate, "plot": cmd_plot,
            "diagnose": cmd_diagnose, "confusion": cmd_confusion, "report": cmd_report, "inspect": cmd_inspect,
            "predict": cmd_predict, "export": cmd_export, "audit": cmd_audit, "robustness": cmd_robustness}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
