"""A recipe is plain data: every choice that decides a run, loaded from TOML, overridable field by field.

Shipped recipes live in `cnnlab/recipes/*.toml`; `--recipe FILE` takes any TOML with the same
fields. The resolved recipe is saved into every run folder, and is enough to reproduce the run.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import UsageError

SCHEDULES = ("cosine", "constant", "onecycle", "linear")
PAD_MODES = ("zeros", "reflect")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
EVAL_PRECISIONS = ("auto", "fp32")


@dataclass
class Recipe:
    name: str = "seed"
    description: str = ""
    # model and data
    model: str = "smallcnn"
    image_size: int = 32
    val_split: str = "0"        # count ('5000') or fraction ('0.1') held out of the training images
    val_groups: str = ""        # keep groups whole across the split: 'folder' (first subfolder in a class) or a regex on the path
    train_subset: str = "0"     # count or fraction of the training images to train on (0 = all)
    # optimisation (the chapter's Code Fragment 3)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"    # cosine: CosineAnnealingLR(T_max=epochs), stepped once per epoch; linear: to 0, per step
    decoupled_weight_decay: bool = False  # weight_decay is the shrink per step at the peak rate, in every group
    bias_lr_scale: float = 1.0  # biases (batch-norm shifts) train this many times faster than the rest
    muon_lr: float = 0.0        # > 0: convolution filters take Muon steps at this peak rate (cnnlab.muon); 0 = SGD
    muon_momentum: float = 0.6  # Muon's own momentum (Nesterov when `nesterov`)
    lookahead: int = 0          # every this many steps, average the weights into a slow copy and restart from it (0 = off)
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0  # linear warm-up of the rate over this many epochs (per step)
    ema: float = 0.0            # decay of an exponential moving average of the weights, per step (0 = off)
    backbone_lr: float = 0.0    # rate for everything but the head when fine-tuning (0 = same as lr)
    freeze_backbone: bool = False  # train only the head
    weights: str = ""           # start from these weights (a state dict or a cnnlab checkpoint)
    early_stop: int = 0         # stop after this many epochs without a better val_acc (0 = off; needs val_split)
    # augmentation (train split only)
    crop_padding: int = 4
    flip: bool = True
    alternate_flip: bool = False  # flip each image in every other epoch (a random half first), instead of by chance
    pad_mode: str = "zeros"     # how the crop's padding is filled: zeros (the chapter) or reflect
    cutout: int = 0             # side of the square hidden per image (0 = off; 8 or 16 are usual on 32x32)
    random_erasing: float = 0.0  # probability of erasing a random box per image
    color_jitter: float = 0.0   # brightness/contrast/saturation strength
    mixup: float = 0.0          # Beta(alpha, alpha) of mixup (0 = off)
    cutmix: float = 0.0         # Beta(alpha, alpha) of CutMix (0 = off; with mixup, one per batch)
    early_crop: int = 0         # > 0: the first early_crop_epochs epochs train on random crops of this side
    early_crop_epochs: int = 0  # (progressive resizing by cropping; evaluation always sees whole images)
    # speedrun network switches (models speedrun and speedrun-small; ignored by the others)
    whiten: bool = True         # first layer from the training patches' covariance, frozen
    identity_init: bool = True  # 3x3 convolutions start as the identity
    whiten_bias_epochs: float = 0.0  # > 0: the whitening layer's bias trains this many epochs, then stays (0 = always)
    # evaluation
    tta: bool = False           # the final evaluation also averages 10 views (flips, 1-pixel shifts)
    tta_precision: str = "fp32"  # auto: the 10 views in the training precision (bf16 on a bf16 CPU: half the time)
    # execution
    seed: int = 0
    device: str = "auto"        # auto = cuda, then mps, then cpu
    precision: str = "auto"     # auto = the measured best per device (see BENCHMARKS.md)
    channels_last: bool = True
    sync_bn: bool = False       # under torchrun: batch-norm statistics over the global batch, not each rank's slice
    compile: str = "off"        # torch.compile mode for the training and evaluation forward passes
    eval_batch_size: int = 250  # on a CPU faster than 1,000 (the activations stay in cache) and a quarter of the memory
    # auto: the learning-curve evaluations before the last epoch run in the training precision (on a
    # bf16 CPU 2x faster, within 0.1 point: BENCHMARKS.md); the last epoch's, those of runs with a
    # validation split (they select best.pt on it) and every later command's are float32.
    # fp32: every evaluation in float32.
    eval_precision: str = "auto"

    def validate(self) -> "Recipe":
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        from .models import MODEL_CHOICES, is_known_model
        from .splits import count_or_fraction

        for f in fields(self):  # no NaN or infinity anywhere: each would fail late, or train on nonsense
            value = getattr(self, f.name)
            need(not isinstance(value, float) or math.isfinite(value), f"{f.name} must be a finite number (got {value})")
        count_or_fraction(self.val_split, "--val-split")
        count_or_fraction(self.train_subset, "--train-subset")
        need(self.epochs <= 100_000, f"epochs must be at most 100,000 (got {self.epochs})")
        need(self.batch_size <= 65_536 and self.eval_batch_size <= 65_536, "batch sizes must be at most 65,536")
        need(0 <= self.seed < 2 ** 62, f"seed must be between 0 and 2**62 (got {self.seed})")
        need(self.lookahead <= 1_000_000, f"lookahead must be at most 1,000,000 steps (got {self.lookahead})")
        need(self.early_stop <= 100_000, f"early-stop patience must be at most 100,000 epochs (got {self.early_stop})")
        need(is_known_model(self.model), f"unknown model '{self.model}': choose one of {MODEL_CHOICES}")
        need(self.epochs >= 1, f"epochs must be at least 1 (got {self.epochs})")
        need(self.batch_size >= 1, f"batch size must be at least 1 (got {self.batch_size})")
        need(self.eval_batch_size >= 1, f"eval batch size must be at least 1 (got {self.eval_batch_size})")
        need(self.lr > 0 and self.lr == self.lr, f"learning rate must be a positive number (got {self.lr})")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1) (got {self.momentum})")
        need(self.weight_decay >= 0, f"weight decay must not be negative (got {self.weight_decay})")
        need(0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1) (got {self.label_smoothing})")
        need(0 <= self.crop_padding <= 16, f"crop padding must be between 0 and 16 (got {self.crop_padding})")
        need(8 <= self.image_size <= 512, f"image size must be between 8 and 512 (got {self.image_size})")
        need(self.schedule in SCHEDULES, f"unknown schedule '{self.schedule}': choose one of {', '.join(SCHEDULES)}")
        need(self.pad_mode in PAD_MODES, f"unknown pad mode '{self.pad_mode}': choose one of {', '.join(PAD_MODES)}")
        need(self.whiten_bias_epochs >= 0, f"whiten bias epochs must not be negative (got {self.whiten_bias_epochs})")
        need(self.muon_lr >= 0, f"Muon learning rate must not be negative (got {self.muon_lr})")
        need(0 <= self.muon_momentum < 1, f"Muon momentum must be in [0, 1) (got {self.muon_momentum})")
        need(self.bias_lr_scale > 0, f"bias learning-rate scale must be positive (got {self.bias_lr_scale})")
        need(self.lookahead >= 0, f"lookahead takes a step count, 0 = off (got {self.lookahead})")
        need(not (self.alternate_flip and not self.flip), "--alternate-flip needs --flip")
        need(self.precision in PRECISIONS, f"unknown precision '{self.precision}': choose one of {', '.join(PRECISIONS)}")
        need(self.eval_precision in EVAL_PRECISIONS,
             f"unknown eval precision '{self.eval_precision}': choose one of {', '.join(EVAL_PRECISIONS)}")
        need(self.tta_precision in EVAL_PRECISIONS,
             f"unknown TTA precision '{self.tta_precision}': choose one of {', '.join(EVAL_PRECISIONS)}")
        need(self.compile in COMPILE_MODES, f"unknown compile mode '{self.compile}': choose one of {', '.join(COMPILE_MODES)}")
        need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
             f"unknown device '{self.device}': use auto, cpu, cuda, cuda:N or mps")
        need(not (self.nesterov and self.momentum == 0), "nesterov needs a non-zero momentum")
        need(0 <= self.cutout <= self.image_size, f"cutout must be between 0 and the image size (got {self.cutout})")
        need(0 <= self.random_erasing <= 1, f"random erasing is a probability in [0, 1] (got {self.random_erasing})")
        need(0 <= self.color_jitter < 1, f"colour jitter strength must be in [0, 1) (got {self.color_jitter})")
        need(0 <= self.early_crop < self.image_size,
             f"early crop must be smaller than the image size {self.image_size}, 0 = off (got {self.early_crop})")
        need(0 <= self.early_crop_epochs < self.epochs,
             f"early-crop epochs must be fewer than the run's {self.epochs} epochs (got {self.early_crop_epochs})")
        need(bool(self.early_crop) == bool(self.early_crop_epochs),
             "--early-crop and --early-crop-epochs go together: give both (for example --early-crop 24 --early-crop-epochs 6)")
        need(self.mixup >= 0 and self.cutmix >= 0, "mixup and cutmix take a Beta alpha >= 0 (0 = off)")
        need(0 <= self.ema < 1, f"ema is a decay in [0, 1), such as 0.999 (got {self.ema})")
        need(0 <= self.warmup_epochs < self.epochs, f"warm-up must be shorter than the run (got {self.warmup_epochs} of {self.epochs} epochs)")
        need(self.backbone_lr >= 0, f"backbone learning rate must not be negative (got {self.backbone_lr})")
        need(not (self.freeze_backbone and self.backbone_lr), "--freeze-backbone and --backbone-lr contradict each other; pick one")
        need(self.early_stop >= 0, f"early-stop patience must not be negative (got {self.early_stop})")
        need(not self.val_groups or self.val_split not in ("0", "0.0", ""),
             "--val-groups decides how validation images are chosen: add --val-split (for example --val-split 0.2)")
        need(self.early_stop == 0 or self.val_split not in ("0", "0.0", ""),
             "early stopping watches validation accuracy: add --val-split (for example --val-split 5000)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def shipped_recipes() -> dict[str, Path]:
    folder = resources.files("cnnlab") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def load_recipe(name_or_path: str = "seed", overrides: dict | None = None) -> Recipe:
    """Load a shipped recipe by name or a TOML file by path, then apply `overrides` (None values skipped)."""
    shipped = shipped_recipes()
    if name_or_path in shipped:
        path = shipped[name_or_path]
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise UsageError(f"unknown recipe '{name_or_path}': use one of {', '.join(sorted(shipped))} or the path of a TOML file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"recipe {path} is not valid TOML ({e}); fix the file") from None
    data.setdefault("name", path.stem)
    return recipe_from_dict(data, overrides, where=str(path))


def recipe_from_dict(data: dict, overrides: dict | None = None, where: str = "recipe") -> Recipe:
    known = {f.name: f for f in fields(Recipe)}
    merged = dict(data)
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values = {}
    for key, value in merged.items():
        if key not in known:
            raise UsageError(f"{where}: unknown field '{key}'; known fields are {', '.join(known)}")
        values[key] = _coerce(key, value, known[key].type, where)
    return Recipe(**values).validate()


def _coerce(key: str, value, type_name, where: str):
    """TOML and argparse give the right types already; this catches a recipe file's mistakes."""
    type_name = str(type_name)
    if type_name == "bool":
        if isinstance(value, bool):
            return value
    elif type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif type_name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif type_name == "str":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise UsageError(f"{where}: field '{key}' should be {type_name}, got {value!r}")
