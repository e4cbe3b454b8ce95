"""`cnnlab bench`: training throughput of the chapter's recipe, variants side by side in one run.

Each measurement runs in a fresh subprocess (so process-wide settings such as the allocator or
thread count never leak between variants), and repeats are interleaved A B C A B C ... so that a
noisy neighbour slows every variant alike. We report medians and the spread (min to max).

Variants are data (bench_variants.py): a name, which loader, and the execution settings. `seed-literal` is what a user
copying the chapter gets: a per-sample Dataset with per-image crop, flip, to-tensor and normalize,
a DataLoader(batch_size=128, shuffle=True, num_workers=2), an NCHW float32 model, and `loss.item()`
every step. The `cnnlab-*` variants time cnnlab's own `train_one_epoch` on the in-memory loader.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from .bench_variants import VARIANTS, Variant
from .device import cpu_description
from .errors import CnnlabError, UsageError
from .flops import ASSUMED_GHZ, compute_units, forward_macs, operator_shares, peak_flops, peak_unit

# ---------------------------------------------------------------------------------------------
# The chapter's data path, rebuilt without torchvision (what torchvision's transforms do per image)


class ChapterDataset(torch.utils.data.Dataset):
    """Per-sample: uint8 HWC -> PIL -> pad 4 + random 32x32 crop -> random flip -> [0,1] CHW -> normalize."""

    def __init__(self, images_nchw: torch.Tensor, labels: torch.Tensor, mean, std):
        self.images = images_nchw.permute(0, 2, 3, 1).numpy()  # torchvision's CIFAR10 keeps HWC numpy
        self.labels = labels.tolist()
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        image = Image.fromarray(self.images[i])
        padded = np.pad(np.asarray(image), ((4, 4), (4, 4), (0, 0)))  # RandomCrop(32, padding=4)
        top, left = torch.randint(0, 9, (2,)).tolist()
        image = Image.fromarray(padded).crop((left, top, left + 32, top + 32))
        if torch.rand(1).item() < 0.5:  # RandomHorizontalFlip()
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div(255)  # ToTensor()
        return (x - self.mean) / self.std, self.labels[i]  # Normalize(MEAN, STD)


# ---------------------------------------------------------------------------------------------
# One measurement (runs inside a worker subprocess)


def measure(
    variant: Variant, data_source: str, steps: int, warmup: int, batch_size: int, seed: int, profile: bool = False
) -> dict:
    """Images per second of `warmup` untimed and `steps` timed training steps of `variant`, set up by
    prepare() as `cnnlab train` sets up a run (the seed recipe at `batch_size`, the others at their own).
    profile: also the share of the timed steps' time per operator family (the profiler slows them, so a
    profiled measurement is not one of the timed repeats)."""
    import dataclasses
    import resource

    from .data import load_dataset
    from .prepare import prepare
    from .recipe_files import load_recipe

    if variant.threads:
        torch.set_num_threads(variant.threads)
    overrides = {
        **dict(variant.overrides),
        "seed": seed,
        **({"batch_size": batch_size} if variant.recipe == "seed" else {}),
    }
    recipe = load_recipe(variant.recipe, overrides)
    data = load_dataset(data_source, progress=False)
    n = (warmup + steps) * recipe.batch_size
    data = dataclasses.replace(
        data,
        train_images=data.train_images[:n],
        train_labels=data.train_labels[:n],
        train_files=None,
        train_groups=None,
    )
    setup = prepare(recipe, data, tune_allocator=variant.tune_allocator)
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    timing = {"dataloader": _chapter_loop, "memory": _minimal_loop if variant.loop == "minimal" else _cnnlab_loop}
    with torch.profiler.profile() if profile else contextlib.nullcontext() as profiler:
        seconds = timing[variant.loader](setup.state, warmup, steps)
    # Minor page faults of this process per training step (warm-up included; DataLoader workers not counted).
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / (warmup + steps)
    return {
        "variant": variant.name,
        "images_per_s": steps * recipe.batch_size / seconds,
        "seconds": seconds,
        "steps": steps,
        "page_faults_per_step": faults,
        "model": recipe.model,
        "batch_size": recipe.batch_size,
        "precision": setup.state.precision,
        **({"operator_shares": operator_shares(profiler)} if profile else {}),
    }


def _cnnlab_loop(state, warmup: int, steps: int) -> float:
    """cnnlab's own train_one_epoch: a short epoch to warm up (and compile), then the timed one."""
    from .epoch import train_one_epoch

    loader, split = state.train_loader, warmup * state.recipe.batch_size
    state.train_loader = loader.part(0, split)
    train_one_epoch(state, False, 0)
    state.train_loader = loader.part(split, None)
    return train_one_epoch(state, False, 1)[2]


def _minimal_loop(state, warmup: int, steps: int) -> float:
    """The few lines a speedrun script writes for the same maths: rate, forward, backward, step, lookahead."""
    from .device import autocast
    from .schedule import learning_rate, set_learning_rate

    recipe, model, optimizer, net = state.recipe, state.net.model, state.optimizer, state.net

    def epoch(loader, index: int) -> None:
        model.train()
        for step, (x, y) in enumerate(loader):
            set_learning_rate(optimizer, learning_rate(recipe, index, step, len(loader)))
            with autocast(state.device, state.precision):
                loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if net.lookahead is not None:
                net.lookahead.after_step(model, index * len(loader) + step + 1, recipe.epochs * len(loader))

    split = warmup * recipe.batch_size
    epoch(state.train_loader.part(0, split), 0)
    synchronize = torch.cuda.synchronize if state.device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    epoch(state.train_loader.part(split, None), 1)
    synchronize()  # a GPU runs ahead of Python: the clock stops when its queue is done
    return time.perf_counter() - start


def _chapter_loop(state, warmup: int, steps: int) -> float:
    """What a user copying the chapter runs: a DataLoader over per-image transforms, `loss.item()` every step."""
    loader = torch.utils.data.DataLoader(
        ChapterDataset(state.train_loader.images, state.train_loader.labels, state.mean, state.std),
        batch_size=state.recipe.batch_size,
        shuffle=True,
        num_workers=2,
    )
    model, optimizer, criterion = state.net.model.train(), state.optimizer, torch.nn.CrossEntropyLoss()
    batches = iter(loader)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        x, y = next(batches)
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        loss.item()  # the chapter's `running += loss.item()`
    seconds = time.perf_counter() - start
    del batches
    return seconds


# ---------------------------------------------------------------------------------------------
# The driver


def _check_enough_images(variant: Variant, available: int, steps: int, warmup: int, batch_size: int) -> None:
    """A timed step needs a whole batch: refuse a data set too small for warm-up plus timed steps."""
    from .recipe_files import load_recipe

    batch = batch_size if variant.recipe == "seed" else load_recipe(variant.recipe, dict(variant.overrides)).batch_size
    needed = (warmup + steps) * batch
    if available < needed:
        raise UsageError(
            f"bench variant {variant.name} needs {needed} training images ({warmup} warm-up + {steps} timed steps "
            f"of {batch}); the data has {available}: pass fewer steps or a larger data set",
            parameters=("steps", "warmup"),
        )


def run_bench(
    variants: list[str],
    data_source: str,
    repeats: int = 3,
    steps: int = 40,
    warmup: int = 8,
    batch_size: int = 128,
    log=print,
    profile: bool = False,
) -> dict:
    """Every variant measured `repeats` times, interleaved, each in a fresh worker process; a table of medians.
    profile: then one more, profiled, run of each variant for the share of its step per operator family."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown bench variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    if repeats < 1 or steps < 1 or warmup < 1:
        raise UsageError("repeats, steps and warmup must be at least 1", parameters=("repeats", "steps", "warmup"))
    from .data import load_dataset

    data = load_dataset(data_source, progress=False)  # decode once here, so workers read the cache
    for name in variants:
        _check_enough_images(VARIANTS[name], len(data.train_labels), steps, warmup, batch_size)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(repeats):
        for name in variants:
            results[name].append(_worker(name, data_source, steps, warmup, batch_size, r))
            log(f"  repeat {r + 1}/{repeats}  {name:<22} {results[name][-1]['images_per_s']:7.0f} img/s")
    rows, macs_of = _rows(variants, results)
    for row in rows if profile else []:
        row["operator_shares"] = _worker(row["variant"], data_source, steps, warmup, batch_size, 0, True)[
            "operator_shares"
        ]
        log(f"  profiled {row['variant']}")
    cpu = cpu_description()
    machine = {
        "cores": os.cpu_count() or 1,
        "cpu": cpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "assumed_ghz": ASSUMED_GHZ,
    }
    return {
        "machine": machine,
        "forward_macs_per_image": macs_of,
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "data": data_source,
        "rows": rows,
    }


def _worker(name: str, source: str, steps: int, warmup: int, batch: int, seed: int, profile: bool = False) -> dict:
    """One measurement in a fresh process, so no variant inherits another's thread pools or caches."""
    args = [sys.executable, "-m", "cnnlab.bench", name, source, str(steps), str(warmup), str(batch), str(seed)]
    done = subprocess.run([*args, *(["profile"] if profile else [])], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise CnnlabError(f"bench worker for {name} failed (exit {done.returncode}): {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rows(variants: list[str], results: dict[str, list[dict]]) -> tuple[list[dict], dict]:
    """One row per variant: median and spread, speed-up against the first, work done against the peak."""
    from .models import build_model

    model_of = {name: results[name][0]["model"] for name in variants}
    macs_of = {m: forward_macs(build_model(m, 10)) for m in set(model_of.values())}
    cpu = cpu_description()
    units = compute_units(set(cpu["flags"]), cpu["vendor"], int(cpu["family"]) if cpu["family"] else None)
    baseline = statistics.median(r["images_per_s"] for r in results[variants[0]])
    rows = []
    for name in variants:
        s = [r["images_per_s"] for r in results[name]]
        median, precision = statistics.median(s), results[name][0]["precision"]  # "auto" as the worker resolved it
        achieved = median * 6 * macs_of[model_of[name]]  # forward 2 FLOP per MAC, backward about twice the forward
        unit = peak_unit(units, precision)
        peak = peak_flops(unit, cpu["physical_cores"])
        rows.append(
            {
                "variant": name,
                "description": VARIANTS[name].description,
                "precision": precision,
                "images_per_s_median": median,
                "images_per_s_min": min(s),
                "images_per_s_max": max(s),
                "samples": s,
                "epoch_seconds_median": 50_000 / median,
                "speedup_vs_first": median / baseline,
                "achieved_gflops": achieved / 1e9,
                "peak_gflops_assumed": peak / 1e9,
                "peak_unit": unit.name,
                "fraction_of_peak": achieved / peak,
                "page_faults_per_step_median": statistics.median(r["page_faults_per_step"] for r in results[name]),
                "model": model_of[name],
                "forward_macs_per_image": macs_of[model_of[name]],
            }
        )
    return rows, macs_of


def format_table(result: dict) -> str:
    cpu, machine = result["machine"]["cpu"], result["machine"]
    lines = [
        f"Training throughput (SmallCNN at batch {result['batch_size']}; speedrun variants at their recipe's batch), "
        f"{result['steps']} timed steps, "
        f"median of {result['repeats']} interleaved repeats (min-max); epoch = 50,000 images",
        f"{'variant':<22} {'prec':>4} {'img/s':>7} {'min-max':>13} {'epoch s':>8} {'speed-up':>8} {'GFLOP/s':>8} "
        f"{'of peak':>8} {'faults/step':>11}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['variant']:<22} {r['precision']:>4} {r['images_per_s_median']:7.0f} "
            f"{r['images_per_s_min']:6.0f}-{r['images_per_s_max']:<6.0f} "
            f"{r['epoch_seconds_median']:8.1f} {r['speedup_vs_first']:7.2f}x {r['achieved_gflops']:8.1f} "
            f"{100 * r['fraction_of_peak']:7.0f}% {r['page_faults_per_step_median']:11.0f}"
        )
    profiled = [r for r in result["rows"] if "operator_shares" in r]
    if profiled:
        families = list(profiled[0]["operator_shares"])
        lines.append("share of a step's operator time (torch.profiler, one more run of each variant):")
        lines.append(f"{'variant':<22} " + " ".join(f"{f:>15}" for f in families))
        for r in profiled:
            lines.append(f"{r['variant']:<22} " + " ".join(f"{100 * r['operator_shares'][f]:14.1f}%" for f in families))
    work = "; ".join(f"{model} {macs:,}" for model, macs in result["forward_macs_per_image"].items())
    lines.append(f"work: multiply-adds per image forward: {work}; a training step counted as 6 FLOP per multiply-add.")
    lines.append(
        f"cpu: {cpu['name']} (family {cpu['family']}, model {cpu['model']}), {cpu['isa']}, flags "
        f"{' '.join(cpu['flags']) or 'none of note'}; peak = {cpu['physical_cores']} physical cores x "
        f"{machine['assumed_ghz']} GHz (assumed) x FLOP per cycle per core of the unit each precision runs on:"
    )
    units = compute_units(set(cpu["flags"]), cpu["vendor"], int(cpu["family"]) if cpu["family"] else None)
    for unit in units:
        lines.append(f"  {unit.name} ({unit.precision}): {unit.flop_per_cycle_per_core} ({unit.source})")
    if not any(u.precision == "bf16" for u in units):
        lines.append("  bf16: no native unit, so oneDNN computes it in fp32 and its peak is fp32's")
    return "\n".join(lines)


if __name__ == "__main__":  # worker: python -m cnnlab.bench VARIANT DATA STEPS WARMUP BATCH SEED [profile]
    name, source, steps, warmup, batch, seed = sys.argv[1:7]
    profile = sys.argv[7:] == ["profile"]
    print(json.dumps(measure(VARIANTS[name], source, int(steps), int(warmup), int(batch), int(seed), profile)))
