"""A recipe is plain data: every choice that decides a run, loaded from TOML, overridable field by field.

Each field is declared once, below: its type and default, and in `knob(...)` its help text, its
allowed values or range, whether it counts epochs, and the model family it applies to. Validation,
the CLI's training flags and the README's table of fields (recipe_flags.py) are all made from these
declarations. A model's own switches (the speedrun network's whitening layer) are not fields: they
are `model_options`, declared by the model (models/__init__.py).

Shipped recipes live in `cnnlab/recipes/*.toml` and load with recipe_files.load_recipe; `--recipe
FILE` takes any TOML with the same fields. The resolved recipe is saved into every run folder, and
is enough to reproduce the run.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields

from .errors import UsageError

GROUPS = ("data", "optimisation", "augmentation", "evaluation", "execution")


@dataclass(frozen=True)
class Knob:
    """What a recipe field means and which values it takes (see `knob`)."""

    help: str
    group: str
    low: float | None = None  # the smallest value allowed
    above: float | None = None  # values must be greater than this
    high: float | None = None  # the largest value allowed
    below: float | None = None  # values must be smaller than this
    choices: tuple[str, ...] = ()
    count: bool = False  # a count ('5000') or a fraction ('0.1')
    epochs: bool = False  # counts epochs: scales with the run when --epochs changes a recipe's length
    family: str = ""  # the model family it applies to ('speedrun'); '' for every model
    cli: bool = True  # a training flag (--name-with-dashes)
    metavar: str | None = None

    def problem(self, name: str, value) -> str:
        """Why `value` is not allowed for field `name`; '' when it is."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} must be a finite number (got {value})"
        if self.choices and value not in self.choices:
            return f"unknown {name} {value!r}: choose one of {', '.join(self.choices)}"
        if self.count:
            try:
                count_or_fraction(value, name)
            except UsageError as e:
                return str(e)
        for bound, fails, words in (
            (self.low, lambda v, b: v < b, "at least"),
            (self.above, lambda v, b: v <= b, "above"),
            (self.high, lambda v, b: v > b, "at most"),
            (self.below, lambda v, b: v >= b, "below"),
        ):
            if bound is not None and fails(value, bound):
                return f"{name} must be {words} {_number(bound)} (got {value})"
        return ""


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:g}"


def knob(default, help: str, group: str, **declaration):
    """A recipe field: its default, and what `Knob` says about it."""
    spec = {"default_factory": default} if callable(default) else {"default": default}
    return field(**spec, metadata={"knob": Knob(help, group, **declaration)})


SCHEDULES = ("cosine", "constant", "onecycle", "linear")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
EVAL_PRECISIONS = ("auto", "fp32")
TTA_VIEW_SETS = ("shifts", "diagonals")  # evaluate.TTA_VIEWS
CLASS_WEIGHTINGS = ("none", "balanced", "effective")  # imbalance.class_weights
SAMPLERS = ("none", "balanced")  # imbalance.balanced_sample_weights
SELECTION_METRICS = ("val_acc", "val_balanced_acc", "val_macro_f1")  # higher is better, all in percent


@dataclass
class Recipe:
    name: str = knob("seed", "the recipe's name (run folders are named after it)", "data", cli=False)
    description: str = knob("", "one line on what the recipe is for", "data", cli=False)
    # model and data
    model: str = knob("smallcnn", "the network (cnnlab models lists them)", "data")
    model_options: dict = knob(
        dict, "the model's own switches (cnnlab models says which a model has)", "data", cli=False
    )
    image_size: int = knob(32, "images of other sizes are resized to this", "data", low=8, high=512)
    val_split: str = knob(
        "0", "hold out a count (5000) or a fraction (0.1) of the training images for validation", "data", count=True
    )
    val_groups: str = knob(
        "",
        "keep groups whole across the validation split: 'folder' (the first subfolder inside "
        "each class folder) or a regular expression over the image's path below train/",
        "data",
        metavar="PATTERN",
    )
    sampler: str = knob(
        "none",
        "none (each image once an epoch), or balanced: draw each epoch's images with replacement, every "
        "class equally likely",
        "data",
        choices=SAMPLERS,
    )
    train_subset: str = knob(
        "0", "train on a seeded, stratified count or fraction of the training images (0 = all)", "data", count=True
    )
    # optimisation (the chapter's Code Fragment 3)
    epochs: int = knob(30, "passes over the training images", "optimisation", low=1, high=100_000)
    batch_size: int = knob(128, "training images per step", "optimisation", low=1, high=65_536)
    lr: float = knob(0.1, "the peak learning rate", "optimisation", above=0)
    momentum: float = knob(0.9, "SGD momentum", "optimisation", low=0, below=1)
    weight_decay: float = knob(5e-4, "SGD weight decay (L2)", "optimisation", low=0)
    nesterov: bool = knob(False, "Nesterov momentum", "optimisation")
    schedule: str = knob(
        "cosine",
        "cosine (CosineAnnealingLR, stepped per epoch), constant, onecycle, or linear "
        "(the speedruns' triangle, per step)",
        "optimisation",
        choices=SCHEDULES,
    )
    lr_start_fraction: float = knob(
        0.0,
        "linear schedule: the warm-up starts from this fraction of lr (airbench: 0.2)",
        "optimisation",
        low=0,
        high=1,
        metavar="F",
    )
    lr_end_fraction: float = knob(
        0.0,
        "linear schedule: the rate falls to this fraction of lr at the last step (airbench: 0.07)",
        "optimisation",
        low=0,
        high=1,
        metavar="F",
    )
    decoupled_weight_decay: bool = knob(
        False, "read the weight decay as the shrink per step at the peak rate, in every parameter group", "optimisation"
    )
    bias_lr_scale: float = knob(
        1.0,
        "biases (batch-norm shifts) train this many times faster than the rest",
        "optimisation",
        above=0,
        metavar="K",
    )
    muon_lr: float = knob(
        0.0,
        "convolution filters take Muon steps at this peak rate (0 = SGD for everything)",
        "optimisation",
        low=0,
        metavar="LR",
    )
    muon_momentum: float = knob(
        0.6, "Muon's own momentum (Nesterov when nesterov is on)", "optimisation", low=0, below=1
    )
    lookahead: int = knob(
        0,
        "every this many steps, average the weights into a slow copy and restart from it (0 = off)",
        "optimisation",
        low=0,
        high=1_000_000,
        metavar="STEPS",
    )
    label_smoothing: float = knob(0.0, "label smoothing of the cross-entropy", "optimisation", low=0, below=1)
    class_weights: str = knob(
        "none",
        "weigh the cross-entropy per class: none, balanced (inverse frequency) or effective (Cui et al. 2019's "
        "effective number of samples, with class_weights_beta)",
        "optimisation",
        choices=CLASS_WEIGHTINGS,
    )
    class_weights_beta: float = knob(
        0.9999, "beta of the effective number of samples (0.9999 is the paper's choice for CIFAR-10-LT)",
        "optimisation", low=0, below=1,
    )  # fmt: skip
    warmup_epochs: float = knob(
        0.0, "linear warm-up of the rate over this many epochs (per step)", "optimisation", low=0, epochs=True
    )
    ema: float = knob(
        0.0,
        "decay of a moving average of the weights per step, such as 0.999 (0 = off); saved as ema.pt",
        "optimisation",
        low=0,
        below=1,
        metavar="DECAY",
    )
    backbone_lr: float = knob(
        0.0, "rate of everything but the head when fine-tuning (0 = the same as lr)", "optimisation", low=0
    )
    freeze_backbone: bool = knob(False, "train only the head", "optimisation")
    weights: str = knob(
        "", "start from these weights (a state dict or a cnnlab checkpoint)", "optimisation", metavar="FILE"
    )
    early_stop: int = knob(
        0,
        "stop after this many epochs without a better validation metric (0 = off; needs a validation split)",
        "optimisation",
        low=0,
        high=100_000,
        metavar="PATIENCE",
    )
    early_stop_metric: str = knob(
        "val_acc",
        "the validation metric that chooses best.pt and that early stopping watches",
        "optimisation",
        choices=SELECTION_METRICS,
    )
    early_stop_min_delta: float = knob(
        0.0, "for early stopping, a gain of at most this many points is no improvement", "optimisation", low=0, high=100
    )
    early_stop_grace: int = knob(
        0, "early stopping never stops within the first this many epochs", "optimisation", low=0, high=100_000
    )
    whiten_bias_lr_scale: float = knob(
        0.0,
        "the whitening layer's bias trains at this multiple of lr (0 = bias_lr_scale's, as the batch-norm "
        "shifts; airbench: 1)",
        "optimisation",
        low=0,
        family="speedrun",
        metavar="K",
    )
    whiten_bias_epochs: float = knob(
        0.0,
        "the whitening layer's bias trains this many epochs, then stays (0 = always)",
        "optimisation",
        low=0,
        epochs=True,
        family="speedrun",
        metavar="E",
    )
    # augmentation (training images only)
    crop_padding: int = knob(4, "random-crop padding in pixels (0 = no crop)", "augmentation", low=0, high=16)
    flip: bool = knob(True, "random horizontal flip", "augmentation")
    alternate_flip: bool = knob(
        False, "flip each image in every other epoch (a random half first), instead of by chance", "augmentation"
    )
    pad_mode: str = knob(
        "zeros",
        "how the crop's padding is filled: zeros (the chapter) or reflect",
        "augmentation",
        choices=("zeros", "reflect"),
    )
    cutout: int = knob(
        0,
        "side of the square hidden per image (0 = off; 8 or 16 are usual on 32x32)",
        "augmentation",
        low=0,
        metavar="SIZE",
    )
    random_erasing: float = knob(
        0.0, "probability of erasing a random box of each image", "augmentation", low=0, high=1, metavar="P"
    )
    color_jitter: float = knob(
        0.0, "brightness, contrast and saturation strength", "augmentation", low=0, below=1, metavar="S"
    )
    mixup: float = knob(0.0, "Beta(alpha, alpha) of mixup (0 = off)", "augmentation", low=0, metavar="ALPHA")
    cutmix: float = knob(
        0.0,
        "Beta(alpha, alpha) of CutMix (0 = off; with mixup, one of them per batch)",
        "augmentation",
        low=0,
        metavar="ALPHA",
    )
    early_crop: int = knob(
        0,
        "the first early_crop_epochs epochs train on random crops of this side (0 = off)",
        "augmentation",
        low=0,
        metavar="SIZE",
    )
    early_crop_epochs: int = knob(
        0,
        "how many epochs early_crop lasts (progressive resizing by cropping)",
        "augmentation",
        low=0,
        epochs=True,
        metavar="E",
    )
    # evaluation
    tta: bool = knob(False, "the final evaluation also averages views of each image (tta_views)", "evaluation")
    tta_views: str = knob(
        "shifts",
        "shifts: the image and its 1-pixel shifts up, down, left and right, each mirrored (10 views); "
        "diagonals: airbench's 6, the image (weighted half) and its two diagonal shifts, each mirrored",
        "evaluation",
        choices=TTA_VIEW_SETS,
    )
    tta_precision: str = knob(
        "fp32",
        "fp32, or auto: the TTA views in the training precision (bf16 on a bf16 CPU: half the time)",
        "evaluation",
        choices=EVAL_PRECISIONS,
    )
    eval_batch_size: int = knob(
        250,
        "images per evaluation batch (on a CPU 250 is faster than 1,000, and a quarter of the memory)",
        "evaluation",
        low=1,
        high=65_536,
    )
    eval_precision: str = knob(
        "auto",
        "auto: learning-curve points before the last epoch in the training precision (on "
        "a bf16 CPU 2x faster, within 0.1 point), results in float32; fp32: every "
        "evaluation in float32",
        "evaluation",
        choices=EVAL_PRECISIONS,
    )
    # execution
    seed: int = knob(
        0,
        "seed of the split, the data order, the augmentation and the initial weights",
        "execution",
        low=0,
        below=2**62,
    )
    device: str = knob("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps", "execution")
    precision: str = knob(
        "auto", "auto (the measured best per device), fp32, bf16 or fp16", "execution", choices=PRECISIONS
    )
    channels_last: bool = knob(True, "channels-last memory format", "execution")
    sync_bn: bool = knob(False, "under torchrun: batch-norm statistics over the global batch", "execution")
    threads: int = knob(
        0,
        "CPU threads for this run's training and evaluation (0 = one per core, PyTorch's default); give each "
        "of several runs sharing a machine its own share, or they thrash",
        "execution",
        low=0,
        high=4096,
    )
    compile: str = knob(
        "off",
        "torch.compile mode for the forward passes: off, default, reduce-overhead (CUDA graphs) or max-autotune",
        "execution",
        choices=COMPILE_MODES,
    )

    def validate(self) -> Recipe:
        """Every field against its declaration, then the rules between fields; model_options resolved."""
        from .models import model_spec

        for f in fields(self):
            problem = declaration(f).problem(f.name, getattr(self, f.name))
            if problem:
                raise UsageError(problem, parameters=(f.name,))
        spec = model_spec(self.model)
        self.model_options = spec.resolve_options(self.model_options)
        for f in fields(self):
            family = declaration(f).family
            if family and family != spec.family and getattr(self, f.name) != f.default:
                raise UsageError(
                    f"{f.name} applies to the {family} models only, not to {self.model}", parameters=(f.name,)
                )
        for ok, message, names in self._rules():
            if not ok:
                raise UsageError(message, parameters=names)
        return self

    def _rules(self):
        """(holds, what to say when it does not, the fields it names) for the rules between fields."""
        held_out = count_or_fraction(self.val_split, "val_split") != 0
        device_ok = self.device == "auto" or re.fullmatch(r"cpu|mps|cuda(:[0-9]{1,3})?", self.device) is not None
        return [
            (device_ok, f"unknown device {self.device!r}: use auto, cpu, cuda, cuda:N or mps", ("device",)),
            (not (self.alternate_flip and not self.flip), "alternate_flip needs flip", ("alternate_flip", "flip")),
            (
                not (self.nesterov and self.momentum == 0),
                "nesterov needs a non-zero momentum",
                ("nesterov", "momentum"),
            ),
            (
                self.cutout <= self.image_size,
                f"cutout ({self.cutout}) must fit in the image (image_size {self.image_size})",
                ("cutout", "image_size"),
            ),
            (
                self.early_crop < self.image_size,
                f"early_crop must be smaller than the image size {self.image_size}, 0 = off (got {self.early_crop})",
                ("early_crop",),
            ),
            (
                self.early_crop_epochs < self.epochs,
                f"early_crop_epochs ({self.early_crop_epochs}) must be fewer than the run's epochs ({self.epochs})",
                ("early_crop_epochs", "epochs"),
            ),
            (
                bool(self.early_crop) == bool(self.early_crop_epochs),
                "early_crop and early_crop_epochs go together: give "
                "both (for example early_crop 24 and early_crop_epochs 6)",
                ("early_crop", "early_crop_epochs"),
            ),
            (
                self.warmup_epochs < self.epochs,
                f"warmup_epochs ({self.warmup_epochs:g}) must be shorter than the run (epochs {self.epochs})",
                ("warmup_epochs", "epochs"),
            ),
            (
                self.schedule == "linear" or not (self.lr_start_fraction or self.lr_end_fraction),
                f"lr_start_fraction and lr_end_fraction shape the linear schedule, not {self.schedule}",
                ("lr_start_fraction", "lr_end_fraction", "schedule"),
            ),
            (
                not (self.freeze_backbone and self.backbone_lr),
                "freeze_backbone and backbone_lr contradict each other; pick one",
                ("freeze_backbone", "backbone_lr"),
            ),
            (
                not self.val_groups or held_out,
                "val_groups decides how validation images are chosen: add val_split (for example 0.2)",
                ("val_groups", "val_split"),
            ),
        ]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def declaration(f: dataclasses.Field) -> Knob:
    return f.metadata["knob"]


def count_or_fraction(value, what: str) -> int | float:
    """A count written in digits ('5000'), or a fraction of what there is, written with a decimal point
    ('0.1', strictly between 0 and 1); '', 0 and None mean none (0). Anything else is a UsageError."""
    text = "" if value is None else str(value).strip()
    if text in ("", "0", "0.0"):
        return 0
    if re.fullmatch(r"[0-9]{1,12}", text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0 < number < 1):
        raise UsageError(
            f"{what} {value!r} is neither a count (5000) nor a fraction between 0 and 1 (0.1)", parameters=(what,)
        )
    return number
