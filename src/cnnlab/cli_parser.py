"""The `cnnlab` argument parser: every command and its flags (the training flags come from the recipe
declarations, recipe_flags.py). A usage error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys


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
    p.add_argument(
        "--data",
        default=default,
        help="cifar10, cifar100, or a path: CIFAR archive/folder, image folder, .tar[.gz] or .zip of one"
        + (" (default: %(default)s)" if default else " (default: the run's own data)"),
    )
    p.add_argument(
        "--labels",
        metavar="FILE.csv",
        help="a CSV naming each image's class (columns path, label, optionally split and group), for images "
        "in any folder structure under --data",
    )
    p.add_argument("--data-root", default="data", help="where cifar10/cifar100 are downloaded (default: %(default)s)")
    p.add_argument("--mirror", help="base URL to download the CIFAR archives from (or $CNNLAB_CIFAR_MIRROR)")
    if image_size:  # training takes it as a recipe field
        p.add_argument("--image-size", type=int, help="images of other sizes are resized to this (default 32)")


def _weights_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        choices=["auto", "best", "last", "ema"],
        default="auto",
        help="which checkpoint of a run folder: auto (best.pt when it was chosen on a validation split, "
        "else last.pt; the default everywhere), best, last or ema",
    )


def _train_options(
    t: argparse.ArgumentParser, epochs_help: str | None = None, data_default: str | None = "cifar10"
) -> None:
    """The training flags: --recipe, the data, and one flag per recipe field and model option, made from their
    declarations (recipe.py, models/__init__.py)."""
    from dataclasses import fields

    from .models import MODELS
    from .recipe import Recipe, declaration
    from .recipe_flags import flag, in_flags, metavar

    t.add_argument("--recipe", help="a shipped recipe name, a TOML file or a run folder (default: seed)")
    _data_options(t, default=data_default, image_size=False)
    t.add_argument("--runs-dir", default="runs", help="parent folder of run folders (default: %(default)s)")
    t.add_argument("--no-progress", action="store_true", help="print nothing but errors")
    groups = {}
    for f in fields(Recipe):
        knob = declaration(f)
        if not knob.cli:
            continue
        if knob.group not in groups:
            groups[knob.group] = t.add_argument_group(
                f"recipe overrides: {knob.group} (each replaces the recipe's field)"
            )
        help_text = (epochs_help if f.name == "epochs" and epochs_help else in_flags(knob.help)).replace("%", "%%")
        if f.type == "bool":
            groups[knob.group].add_argument(
                flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            groups[knob.group].add_argument(flag(f.name), type=kind, metavar=metavar(f), help=help_text)
    options = t.add_argument_group("model options (only for the models that have them: cnnlab models)")
    for key, option in {k: o for spec in MODELS.values() for k, o in spec.options.items()}.items():
        options.add_argument(
            flag(key), dest=f"model_option_{key}", action=argparse.BooleanOptionalAction, default=None, help=option.help
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnlab", description="Train convolutional networks on CIFAR-10-class data, end to end.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    _making_commands(commands)
    _data_commands(commands)
    _analysis_commands(commands)
    _model_commands(commands)
    return parser


def _making_commands(commands) -> None:
    """train and ablate: the recipe's flags, made from its declarations."""
    t = commands.add_parser("train", help="train a model with a recipe; writes a run folder")
    _train_options(t, data_default=None)
    t.add_argument("--resume", metavar="RUN", help="continue a stopped or killed run from its last checkpoint, exactly")
    t.add_argument("--name", help="run folder name (default: generated; an existing run is never overwritten)")
    t.add_argument("--no-plots", action="store_true", help="skip the figures drawn at the end of the run")
    t.add_argument(
        "--tensorboard", action="store_true", help="also write TensorBoard scalars (needs cnnlab[tensorboard])"
    )

    a = commands.add_parser(
        "ablate",
        help="the chapter's ablations: bn (Exercise 19.5.2), recipe (the 'poor recipe' "
        "claim), regularizers (each one added to the seed recipe), speedrun (each technique removed)",
    )
    a.add_argument("ablation", choices=["bn", "recipe", "regularizers", "speedrun"])
    _train_options(a, epochs_help="epochs per variant (default: 15)")

    sw = commands.add_parser(
        "sweep", help="many runs of one question: a grid of recipe fields times seeds, with honest statistics"
    )
    _train_options(sw)
    sw.add_argument("--spec", metavar="FILE.toml", help="the whole sweep from a file (recipe, data, grid, seeds)")
    sw.add_argument(
        "--grid", action="append", metavar="FIELD=V1,V2", help="values of a recipe field to try (repeatable)"
    )
    sw.add_argument("--seeds", type=_bounded_int(1, 10_000), help="seeds per variant: 0 to N-1 (default: 1)")
    sw.add_argument("--baseline", metavar="VARIANT", help="the variant the others are compared with (default: first)")
    sw.add_argument("--out", help="the sweep folder (default: sweeps/<recipe>-<hash of the spec>)")
    sw.add_argument(
        "--workers",
        default="1",
        type=lambda v: v if v == "auto" else _bounded_int(1, 4096)(v),
        help="trials at once, each with its share of the cores as threads; auto: one per core (default: 1)",
    )
    sw.add_argument("--seeds-for", type=float, metavar="POINTS", help="also print the seeds needed to detect POINTS")
    sw.add_argument(
        "--range", action="append", metavar="FIELD=LOW:HIGH[:log]", help="a field's range to search (repeatable)"
    )
    sw.add_argument("--random", type=_bounded_int(1, 10_000), metavar="N", help="random search: draw N variants")
    sw.add_argument("--search", choices=["tpe"], help="tpe: Optuna's TPE sampler chooses the variants (cnnlab[search])")
    sw.add_argument("--trials", type=_bounded_int(1, 10_000), metavar="N", help="variants a TPE search tries")
    sw.add_argument("--sample-seed", type=int, default=0, help="seeds the random draws or TPE (default: 0)")
    sw.add_argument("--storage", metavar="URL", help="the TPE study's database (default: sqlite in the sweep folder)")
    sw.add_argument("--prune", action="store_true", help="TPE: stop clearly losing variants after a few epochs")
    sw.add_argument("--ray", metavar="ADDRESS", help="run the trials as Ray tasks on this cluster (auto, or HOST:PORT)")
    sw.add_argument("--cpus-per-trial", type=_bounded_int(1, 4096), default=1, help="--ray: CPUs (threads) per trial")
    sw.add_argument("--gpus-per-trial", type=float, default=0.0, help="--ray: GPUs per trial (default: 0)")

    la = commands.add_parser(
        "label-audit",
        help="rank the images most likely labelled wrong (confident learning on out-of-sample probabilities)",
    )
    _train_options(la, data_default=None)
    la.add_argument(
        "--run",
        action="append",
        metavar="RUN",
        help="audit the test split with this run's predictions; repeat it to average several runs' "
        "(default: k-fold cross-validation on the training split)",
    )
    la.add_argument(
        "--run-weights",
        choices=["auto", "best", "last", "ema"],
        default="auto",
        help="which checkpoint of each --run (as --weights elsewhere; default: %(default)s)",
    )
    la.add_argument(
        "--folds",
        type=_bounded_int(2, 1000),
        default=4,
        help="audit the training split by k-fold cross-validation with --recipe (default: %(default)s)",
    )
    la.add_argument("--out", help="output folder (default: audits/<data name>-labels; never overwritten)")
    la.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    lf = commands.add_parser(
        "lr-find", help="sweep the learning rate up over a few hundred steps and suggest a peak rate (no run folder)"
    )
    _train_options(lf)
    lf.add_argument("--start", type=float, default=1e-5, help="the sweep's first rate (default: %(default)g)")
    lf.add_argument("--end", type=float, default=10.0, help="its last rate (default: %(default)g)")
    lf.add_argument("--steps", type=_bounded_int(10, 100_000), default=200, help="steps (default: %(default)s)")
    lf.add_argument(
        "--plot",
        default="lr-find.png",
        help="the loss-against-rate figure (default: %(default)s; an existing file is never overwritten)",
    )
    lf.add_argument("--write-recipe", metavar="FILE.toml", help="also write the recipe with the suggested rate")
    lf.add_argument("--json", action="store_true", help="print the curve and the suggestions as JSON")


def _data_commands(commands) -> None:
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
    b.add_argument("--profile", action="store_true", help="also each variant's time per operator family")
    commands.add_parser("recipes", help="list the shipped recipes")
    commands.add_parser("models", help="list the models by name")


def _analysis_commands(commands) -> None:
    """The commands that read a trained run's records and predictions (and audit, which may use a run)."""
    p = commands.add_parser("plot", help="draw a run's figures: curves, confusion, errors, per-class")
    p.add_argument("run", help="a run folder")
    _weights_option(p)
    _data_options(p, default=None)

    g = commands.add_parser(
        "diagnose", help="underfitting, good fit or overfitting, from a run's curves, with remedies"
    )
    g.add_argument("run", help="a run folder")
    _weights_option(g)
    g.add_argument("--json", action="store_true", help="print one JSON object")

    c = commands.add_parser("confusion", help="confusion matrix, most confused pairs and their images")
    c.add_argument("run", help="a run folder")
    _weights_option(c)
    c.add_argument("--top", type=int, default=3, help="how many confused pairs (default: %(default)s)")
    _data_options(c, default=None)
    c.add_argument("--json", action="store_true", help="print one JSON object")

    r = commands.add_parser(
        "report", help="one self-contained HTML page for a run, a comparison of several, or a sweep (cnnlab sweep)"
    )
    r.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or one sweep folder")
    _weights_option(r)
    r.add_argument("--out", help="output file (default: RUN/report.html for one run, else report.html here)")
    _data_options(r, default=None)

    au = commands.add_parser("audit", help="exact and near-duplicate images between and within the splits (leaks)")
    _data_options(au)
    au.add_argument(
        "--space",
        choices=("aligned", "pixels"),
        default="aligned",
        help="aligned: re-score candidate pairs once shifted, mirrored and zoomed into line (finds recrops; "
        "minutes); pixels: 8x8 pixel features only (seconds). Default: %(default)s",
    )
    au.add_argument(
        "--model-run", metavar="RUN", help="compare a trained run's penultimate features instead (cosine similarity)"
    )
    _weights_option(au)
    au.add_argument(
        "--threshold",
        type=float,
        help="similarity counted as a near duplicate (default: the space's own in audit.THRESHOLDS, "
        "chosen in BENCHMARKS.md)",
    )
    au.add_argument("--out", help="output folder (default: audits/<data name>[-model]; never overwritten)")
    au.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    rb = commands.add_parser("robustness", help="test accuracy under generated CIFAR-10-C-style corruptions")
    rb.add_argument("run", help="a run folder (see --weights)")
    _weights_option(rb)
    _data_options(rb, default=None)
    rb.add_argument("--corruptions", help="comma-separated subset (default: all of them)")
    rb.add_argument(
        "--seed", type=_bounded_int(0, 2**31 - 1), default=0, help="seed of the corruption draws (default: %(default)s)"
    )
    rb.add_argument("--device", default="auto")
    rb.add_argument("--json", action="store_true", help="print one JSON object")


def _model_commands(commands) -> None:
    """The commands that use a trained model: evaluate, inspect, predict, export."""
    e = commands.add_parser("evaluate", help="test accuracy, overall and per class, of a run or checkpoint")
    e.add_argument("run", help="a run folder (see --weights) or a checkpoint file")
    _weights_option(e)
    _data_options(e, default=None)
    e.add_argument("--device", default="auto")
    e.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average over flips and one-pixel shifts (the views the run was scored with)",
    )
    e.add_argument(
        "--exclude-duplicates",
        metavar="AUDIT",
        help="also report accuracy without the test images an audit found duplicated in train",
    )
    e.add_argument(
        "--exclude-label-issues",
        metavar="AUDIT",
        help="also report accuracy without the test images a label audit (cnnlab label-audit) flagged",
    )
    e.add_argument("--json", action="store_true", help="print one JSON object")

    i = commands.add_parser(
        "inspect", help="first-layer filters, feature maps and Grad-CAM evidence, as PNGs in the run"
    )
    i.add_argument("run", help="a run folder (see --weights) or a checkpoint file")
    _weights_option(i)
    i.add_argument("--image", action="append", default=[], metavar="FILE", help="an image of your own (repeatable)")
    i.add_argument(
        "--test-index",
        action="append",
        type=int,
        default=[],
        metavar="I",
        help="a test image by index (repeatable; default: one each of four classes)",
    )
    i.add_argument("--out-dir", help="where the PNGs go (default: the run folder)")
    _data_options(i, default=None)

    pr = commands.add_parser("predict", help="top-k classes for image files or folders")
    pr.add_argument("run", help="a run folder (see --weights) or a checkpoint file")
    _weights_option(pr)
    pr.add_argument("paths", nargs="+", metavar="IMAGE_OR_FOLDER")
    pr.add_argument("--top-k", type=int, default=3, help="classes shown per image (default: %(default)s)")
    pr.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average over flips and one-pixel shifts (the views the run was scored with)",
    )
    pr.add_argument(
        "--min-confidence",
        type=float,
        metavar="P",
        help="answer 'unknown' when the top probability (calibrated, when the run fitted a temperature) is below P",
    )
    pr.add_argument("--json", action="store_true", help="one JSON object per image (JSON lines)")
    pr.add_argument("--device", default="cpu")

    x = commands.add_parser("export", help="ONNX or TorchScript, normalisation included, dynamic batch")
    x.add_argument("run", help="a run folder (see --weights) or a checkpoint file")
    _weights_option(x)
    x.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    x.add_argument("--out", help="output file (default: model.onnx or model.torchscript.pt in the run folder)")
    x.add_argument(
        "--input-type",
        default="uint8",
        choices=["uint8", "float32"],
        help="ONNX input: uint8 0-255 or float32 0-1 (TorchScript takes both; default: %(default)s)",
    )
