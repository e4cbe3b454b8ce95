"""What `cnnlab diagnose` tells a run to try, as commands that run: the run's own recipe (`--recipe RUN`
reads it back from the run folder) on the run's own data, with one change whose value fits the data and
the recipe (a validation split smaller than the training set, a patience shorter than the run)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from .analysis import RunRecord

LARGER_MODEL = {"smallcnn": "resnet18", "speedrun-small": "speedrun"}  # the next size up, where there is one
VAL_SHARE, VAL_MOST = 0.1, 5000  # a suggested validation split: a tenth of the training images, at most 5,000


@dataclass
class RunFacts:
    """What the curves alone do not say: the run's folder, data and recipe (all None for bare rows)."""

    run: str | None = None
    source: str | None = None
    labels: str | None = None
    recipe: dict | None = None
    held_out_images: int | None = None
    train_images: int | None = None
    stopped_early: bool = False

    @classmethod
    def of(cls, record: RunRecord) -> RunFacts:
        data = record.config.get("data") if isinstance(record.config.get("data"), dict) else {}
        recipe = record.config.get("recipe") if isinstance(record.config.get("recipe"), dict) else None
        count = lambda key: data.get(key) if isinstance(data.get(key), int) and data.get(key) > 0 else None
        held_out = count("val_held_out") if record.eval_split == "val" else count("test")
        source = data.get("source") if isinstance(data.get("source"), str) else None
        labels = data.get("labels") if isinstance(data.get("labels"), str) else None
        stopped = bool(record.summary.get("stopped_early"))
        return cls(str(record.path), source, labels, recipe, held_out, count("train_used"), stopped)


def remedy_commands(keys: list[str], facts: RunFacts, numbers: dict) -> dict[str, str]:
    """The command for each remedy of `keys` this run can take; a remedy it cannot take is left out."""
    recipe = facts.recipe or {}
    if not facts.source or not recipe:
        return {}
    data = ["--data", facts.source] + (["--labels", facts.labels] if facts.labels else [])
    train = ["cnnlab", "train", "--recipe", facts.run, *data]
    changes = {key: _change(key, recipe, facts, numbers) for key in keys}
    commands = {}
    for key, change in changes.items():
        if change is None:
            continue
        if key == "higher_lr":
            commands[key] = shlex.join(["cnnlab", "lr-find", "--recipe", facts.run, *data])
        elif key == "nothing":
            commands[key] = shlex.join(["cnnlab", "evaluate", facts.run, "--tta"])
        else:
            commands[key] = shlex.join([*train, *change])
    return commands


def _change(key: str, recipe: dict, facts: RunFacts, numbers: dict) -> list[str] | None:
    """The flags of one remedy for this recipe, or None when it has nothing to offer."""
    epochs, decay = recipe.get("epochs", 30), recipe.get("weight_decay", 0.0)
    if key in ("higher_lr", "nothing"):
        return []
    if key == "longer":
        return ["--epochs", str(2 * epochs)]
    if key == "larger":
        bigger = LARGER_MODEL.get(recipe.get("model", ""))
        return ["--model", bigger] if bigger else None
    if key == "weight_decay":
        return ["--weight-decay", f"{2 * decay:g}" if decay else "5e-4"]
    if key == "less_regularization":
        return ["--weight-decay", f"{decay / 2:g}"] if decay else None
    if key == "label_smoothing":
        return None if recipe.get("label_smoothing") else ["--label-smoothing", "0.1"]
    if key == "augmentation":
        return _more_augmentation(recipe)
    if key == "early_stopping":
        return _early_stopping(epochs, facts, numbers)
    raise AssertionError(f"no change for remedy {key}")


def _more_augmentation(recipe: dict) -> list[str] | None:
    """The next step up from the recipe's augmentation: crop, then flip, then cutout, then random erasing."""
    size = recipe.get("image_size", 32)
    if not recipe.get("crop_padding"):
        return ["--crop-padding", str(max(1, size // 8))]
    if not recipe.get("flip"):
        return ["--flip"]
    if not recipe.get("cutout"):
        return ["--cutout", str(max(1, size // 4))]
    if not recipe.get("random_erasing"):
        return ["--random-erasing", "0.25"]
    return None


def _early_stopping(epochs: int, facts: RunFacts, numbers: dict) -> list[str] | None:
    """Early stopping with a patience and grace that fit the run, and a validation split that fits the data
    when the run had none."""
    if epochs < 4:
        return None  # nothing to stop early in a run this short
    patience, grace = max(2, epochs // 6), max(1, epochs // 5)
    flags = ["--early-stop", str(patience), "--early-stop-grace", str(grace)]
    if numbers["split"] == "val":
        return flags
    train = facts.train_images or 0
    held_out = min(VAL_MOST, round(VAL_SHARE * train))
    if held_out < 1 or held_out >= train:
        return None
    return ["--val-split", str(held_out), *flags]
