"""The chapter's experiments, one command each: every variant is a normal run folder, and the
ablation folder around them holds the side-by-side table (ablation.md, ablation.json) and one plot.

An ablation is data: a base recipe, a default length, and named overrides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .recipe import Recipe
from .recipe_files import recipe_from_dict, rescaled
from .runs import atomic_write_bytes, atomic_write_json


@dataclass(frozen=True)
class Ablation:
    name: str
    question: str
    epochs: int
    variants: dict[str, dict]  # variant name -> recipe overrides; the first is the reference
    recipe: str = "seed"  # the base recipe unless --recipe names another


ABLATIONS = {
    "bn": Ablation(
        "bn",
        "Exercise 19.5.2: does batch norm make SmallCNN train faster and better?",
        15,
        {"with-bn": {}, "without-bn": {"model": "smallcnn-nobn"}},
    ),
    "recipe": Ablation(
        "recipe",
        "The chapter's 'poor recipe' claim: what do augmentation, weight decay and the cosine schedule each buy?",
        15,
        {
            "seed": {},
            "no-augmentation": {"crop_padding": 0, "flip": False},
            "no-weight-decay": {"weight_decay": 0.0},
            "constant-lr": {"schedule": "constant"},
            "poor (all three)": {"crop_padding": 0, "flip": False, "weight_decay": 0.0, "schedule": "constant"},
        },
    ),
    "regularizers": Ablation(
        "regularizers",
        "Which of a modern recipe's regularizers help SmallCNN here, each added alone to the seed recipe?",
        15,
        {
            "seed": {},
            "label-smoothing 0.1": {"label_smoothing": 0.1},
            "cutout 8": {"cutout": 8},
            "random-erasing 0.25": {"random_erasing": 0.25},
            "color-jitter 0.2": {"color_jitter": 0.2},
            "mixup 0.2": {"mixup": 0.2},
            "cutmix 1.0": {"cutmix": 1.0},
            "ema 0.999": {"ema": 0.999},
            "nesterov": {"nesterov": True},
            "warmup 1 epoch": {"warmup_epochs": 1.0},
            "onecycle": {"schedule": "onecycle"},
        },
    ),
    "speedrun": Ablation(
        "speedrun",
        "What does each speedrun technique buy? Each switched off in turn from the speedrun-cpu recipe.",
        8,
        {
            "speedrun-cpu": {},
            "no whitening": {"model_options": {"whiten": False}},
            "no identity init": {"model_options": {"identity_init": False}},
            "no whitening GELU": {"model_options": {"whiten_gelu": False}},
            "no bias-lr scale": {"bias_lr_scale": 1.0},
            "no label smoothing": {"label_smoothing": 0.0},
            "no lookahead": {"lookahead": 0},
            "random flips": {"alternate_flip": False},
            "no translation": {"crop_padding": 0},
            "plain SGD momentum": {"nesterov": False},
        },
        recipe="speedrun-cpu",
    ),
}

THRESHOLD = 70.0  # Exercise 19.5.2 asks when each variant first exceeds 70%


def variant_recipes(ablation: Ablation, base: Recipe, epochs: int | None = None) -> dict[str, Recipe]:
    """The base recipe with each variant's overrides; the same seed, so the same data order."""
    shortened = rescaled(base.to_dict(), epochs or ablation.epochs, where=f"recipe {base.name}")
    recipes = {}
    for variant, overrides in ablation.variants.items():
        name = f"{base.name}+{_slug(variant)}" if overrides else base.name
        recipes[variant] = recipe_from_dict(
            {**shortened, "epochs": epochs or ablation.epochs, "name": name},
            overrides,
            where=f"ablation {ablation.name}/{variant}",
        )
    return recipes


def _slug(variant: str) -> str:
    """A folder name: 'poor (all three)' -> 'poor', 'cutout 8' -> 'cutout-8'."""
    return "-".join(variant.split(" (")[0].split())


def run_ablation(
    name: str,
    base: Recipe,
    data,
    *,
    epochs: int | None = None,
    runs_dir: str | Path = "runs",
    progress: bool = True,
    log=print,
) -> dict:
    """Train every variant into runs_dir/ablate-NAME-<time>/<variant>/ and write the comparison there."""
    from .runs import claim_run_folder
    from .train import train

    ablation = ABLATIONS[name]
    recipes = variant_recipes(ablation, base, epochs)
    folder = claim_run_folder(runs_dir, None, stem=f"ablate-{name}")
    results = {}
    for k, (variant, recipe) in enumerate(recipes.items(), start=1):
        if progress:
            log(f"[{k}/{len(recipes)}] {variant}")
        started = time.perf_counter()
        result = train(recipe, data, runs_dir=folder, name=_slug(variant), progress=progress, log=log)
        results[variant] = {"run": str(result.run_dir), "rows": result.rows, "seconds": time.perf_counter() - started}
    return write_comparison(folder, ablation, results)


def compare(ablation: Ablation, results: dict[str, dict]) -> dict:
    """The side-by-side numbers: final and best test accuracy, train-test gap, first epoch over 70%."""
    table = []
    reference = None
    for variant, result in results.items():
        rows = result["rows"]
        last = rows[-1]
        best = max(rows, key=lambda r: r["test_acc"])
        over = next((r["epoch"] for r in rows if r["test_acc"] > THRESHOLD), None)
        line = {
            "variant": variant,
            "run": result["run"],
            "final_test_acc": last["test_acc"],
            "best_test_acc": best["test_acc"],
            "best_epoch": best["epoch"],
            "final_train_acc": last["train_acc"],
            "train_test_gap": last["train_acc"] - last["test_acc"],
            "first_epoch_over_70": over,
            "epochs": last["epoch"],
            "seconds": result.get("seconds"),
            "train_seconds": sum(r["seconds"] for r in rows),
            "final_tta_test_acc": last.get("tta_test_acc"),
        }
        reference = reference if reference is not None else line["final_test_acc"]
        line["vs_reference"] = line["final_test_acc"] - reference
        table.append(line)
    return {"ablation": ablation.name, "question": ablation.question, "threshold": THRESHOLD, "table": table}


def format_table(comparison: dict) -> str:
    """A Markdown table (it reads fine in a terminal too)."""
    lines = [
        f"{comparison['question']}",
        "",
        "| variant | final test acc | vs reference | with TTA | best test acc (epoch) | final train acc | "
        "train-test gap | first epoch > 70% | training time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in comparison["table"]:
        over = r["first_epoch_over_70"] if r["first_epoch_over_70"] is not None else f"never in {r['epochs']}"
        tta = f"{r['final_tta_test_acc']:.2f}%" if r.get("final_tta_test_acc") is not None else "-"
        lines.append(
            f"| {r['variant']} | {r['final_test_acc']:.2f}% | {r['vs_reference']:+.2f} | {tta} | "
            f"{r['best_test_acc']:.2f}% "
            f"({r['best_epoch']}) | {r['final_train_acc']:.2f}% | {r['train_test_gap']:+.2f} | {over} "
            f"| {r.get('train_seconds', 0):.0f} s |"
        )
    lines += ["", "Training accuracy is the running accuracy on the (augmented) training batches of the last epoch."]
    return "\n".join(lines)


def write_comparison(folder: Path, ablation: Ablation, results: dict[str, dict]) -> dict:
    from .plots import plot_comparison

    comparison = compare(ablation, results)
    comparison["folder"] = str(folder)
    atomic_write_json(folder / "ablation.json", comparison)
    atomic_write_bytes(folder / "ablation.md", (format_table(comparison) + "\n").encode())
    plot_comparison(
        {v: r["rows"] for v, r in results.items()},
        folder / "ablation.png",
        title=f"cnnlab ablate {ablation.name}: test accuracy (solid) and training accuracy (dashed)",
    )
    return comparison
