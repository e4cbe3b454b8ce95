"""Every GPU figure BENCHMARKS.md asks for, in one process and one call (benchmarks/gpu.sh runs it).

    python benchmarks/gpu_figures.py DATA OUT [--smoke]

Decodes the data once, then: the 30-epoch seed recipe (wall time split into data preparation, set-up,
compilation, training and evaluation); the speedrun recipe over 10 seeds with and without compile
(accuracy with and without TTA, median time from data on disk to the final evaluation, and when the
mean first reaches 93% and 94%); cnnlab's loop against a minimal loop (`cnnlab bench`); ResNet-18 for
a short schedule; `torchrun --nproc-per-node 1` with NCCL, with and without --sync-bn. Writes OUT/gpu.json
and OUT/gpu.md. A section that fails is recorded with its error and the others still run: a GPU is
lent for minutes.

--smoke runs the same sections on the CPU with tiny sizes (tests/test_gpu_script.py), so the script
cannot rot between the rare calls that have a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from cnnlab.data import load_dataset
from cnnlab.recipe_files import load_recipe
from cnnlab.train import train

SIZES = {
    "full": {
        "seed_epochs": 30,
        "speedrun_seeds": 10,
        "compiled_seeds": 10,
        "resnet_epochs": 5,
        "ddp_epochs": 3,
        "bench": ["--repeats", "3"],
        "overrides": {},
    },
    "smoke": {
        "seed_epochs": 1,
        "speedrun_seeds": 2,
        "compiled_seeds": 1,
        "resnet_epochs": 1,
        "ddp_epochs": 1,
        "bench": ["--repeats", "1", "--steps", "1", "--warmup", "1"],
        "overrides": {"batch_size": 32, "eval_batch_size": 64},
    },
}
TARGETS = (93.0, 94.0)


def versions(device: str) -> dict:
    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
    }
    if device == "cuda":
        found["gpu"] = torch.cuda.get_device_name(0)
        found["cudnn"] = torch.backends.cudnn.version()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        found["cnnlab_commit"] = commit.stdout.strip() or None
    except OSError:
        found["cnnlab_commit"] = None
    return found


def timed_load(source: str, cache: Path) -> tuple:
    start = time.perf_counter()
    data = load_dataset(source, cache_dir=cache, progress=False)
    return data, time.perf_counter() - start


def run_split(summary: dict, rows: list[dict], data_seconds: float) -> dict:
    """One run's wall time in parts. Compilation shows as the first epoch's excess over the median epoch."""
    epochs = [r["seconds"] for r in rows]
    compile_guess = max(0.0, epochs[0] - statistics.median(epochs)) if len(epochs) > 1 else 0.0
    return {
        "final_test_acc": summary["final_test_acc"],
        "final_tta_test_acc": summary.get("final_tta_test_acc"),
        "data_seconds": data_seconds,
        "setup_seconds": summary["setup_seconds"],
        "first_epoch_excess_seconds": compile_guess,
        "train_seconds": summary["train_seconds"],
        "eval_seconds": summary["eval_seconds"],
        "wall_seconds": summary["wall_seconds"],
        "to_final_evaluation_seconds": data_seconds + summary["wall_seconds"],
    }


def seed_recipe(source, cache, device, size, out) -> dict:
    data, data_seconds = timed_load(source, cache)
    recipe = load_recipe("seed", {"epochs": size["seed_epochs"], "device": device, **size["overrides"]})
    result = train(recipe, data, runs_dir=out / "runs", name="seed", progress=False, plots=False)
    return run_split(result.summary, result.rows, data_seconds)


def speedrun(source, cache, device, size, compile_mode: str, seeds: int) -> dict:
    runs = []
    overrides = {"device": device, "compile": compile_mode, **size["overrides"]}
    if size is SIZES["smoke"]:
        overrides["epochs"] = 2
    for seed in range(seeds):
        data, data_seconds = timed_load(source, cache)  # from disk each time: the cache file
        result = train(load_recipe("speedrun", {**overrides, "seed": seed}), data, runs_dir=None, progress=False)
        runs.append(
            {
                **run_split(result.summary, result.rows, data_seconds),
                "curve": [(r["epoch"], r["test_acc"], r["seconds"] + r["eval_seconds"]) for r in result.rows],
            }
        )
    accs = [r["final_test_acc"] for r in runs]
    tta = [r["final_tta_test_acc"] for r in runs if r["final_tta_test_acc"] is not None]
    spread = lambda xs: (
        {
            "mean": statistics.mean(xs),
            "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs),
            "max": max(xs),
        }
        if xs
        else None
    )
    return {
        "compile": compile_mode,
        "seeds": seeds,
        "test_acc": spread(accs),
        "tta_test_acc": spread(tta),
        "median_to_final_evaluation_seconds": statistics.median(r["to_final_evaluation_seconds"] for r in runs),
        "median_train_seconds": statistics.median(r["train_seconds"] for r in runs),
        "time_to_mean": time_to_mean(runs),
        "runs": runs,
    }


def time_to_mean(runs: list[dict]) -> dict:
    """When the mean test accuracy over the seeds first reaches each target: the mean time from data on disk
    to the end of that epoch's evaluation (None when it never does)."""
    epochs = min(len(r["curve"]) for r in runs)
    found = {}
    for target in TARGETS:
        for e in range(epochs):
            if statistics.mean(r["curve"][e][1] for r in runs) >= target:
                found[f"{target:g}"] = {
                    "epoch": e + 1,
                    "seconds": statistics.mean(
                        r["data_seconds"] + r["setup_seconds"] + sum(c[2] for c in r["curve"][: e + 1]) for r in runs
                    ),
                }
                break
        else:
            found[f"{target:g}"] = None
    return found


def resnet(source, cache, device, size, out) -> dict:
    data, data_seconds = timed_load(source, cache)
    recipe = load_recipe("resnet18", {"epochs": size["resnet_epochs"], "device": device, **size["overrides"]})
    result = train(recipe, data, runs_dir=None, progress=False)
    return run_split(result.summary, result.rows, data_seconds)


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=os.environ)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def bench(source, out, size) -> dict:
    cli(
        "-m",
        "cnnlab",
        "bench",
        "--data",
        source,
        "--variants",
        "speedrun-minimal,speedrun-cnnlab",
        *size["bench"],
        "--json",
        str(out / "bench.json"),
    )
    rows = json.loads((out / "bench.json").read_text())["rows"]
    return {
        r["variant"]: {k: r[k] for k in ("images_per_s_median", "images_per_s_min", "images_per_s_max")} for r in rows
    }


def torchrun(source, out, device, size, sync_bn: bool) -> dict:
    name = "ddp-sync-bn" if sync_bn else "ddp"
    cli(
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "1",
        "-m",
        "cnnlab",
        "train",
        "--data",
        source,
        "--epochs",
        str(size["ddp_epochs"]),
        "--device",
        device,
        "--runs-dir",
        str(out / "runs"),
        "--name",
        name,
        "--no-plots",
        "--no-progress",
        *(["--sync-bn"] if sync_bn else []),
        *[x for k, v in size["overrides"].items() for x in (f"--{k.replace('_', '-')}", str(v))],
    )
    summary = json.loads((out / "runs" / name / "summary.json").read_text())
    return {
        "final_test_acc": summary["final_test_acc"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds": summary["wall_seconds"],
        "world_size": summary["world_size"],
        "device": summary["device"],
    }


def section(results: dict, name: str, work) -> None:
    started = time.perf_counter()
    try:
        results[name] = work()
    except Exception as e:  # one broken path must not cost the other figures of a rare GPU call
        results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    print(
        f"[{time.perf_counter() - started:6.1f} s] {name}: {json.dumps(results[name], default=str)[:300]}", flush=True
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    size, device = (SIZES["smoke"], "cpu") if args.smoke else (SIZES["full"], "cuda")
    out, cache = Path(args.out), Path(args.out) / "cache"
    out.mkdir(parents=True, exist_ok=True)
    source = str(Path(args.data).resolve())
    results = {"versions": versions(device), "smoke": args.smoke}
    print(json.dumps(results["versions"]), flush=True)
    start = time.perf_counter()
    load_dataset(source, cache_dir=cache, progress=False)
    results["decode_seconds"] = time.perf_counter() - start  # once: every later load reads the cache
    section(results, "seed_recipe", lambda: seed_recipe(source, cache, device, size, out))
    section(results, "speedrun", lambda: speedrun(source, cache, device, size, "off", size["speedrun_seeds"]))
    section(
        results, "speedrun_compiled", lambda: speedrun(source, cache, device, size, "default", size["compiled_seeds"])
    )
    section(results, "loop_overhead", lambda: bench(source, out, size))
    section(results, "resnet18", lambda: resnet(source, cache, device, size, out))
    section(results, "torchrun", lambda: torchrun(source, out, device, size, sync_bn=False))
    section(results, "torchrun_sync_bn", lambda: torchrun(source, out, device, size, sync_bn=True))
    results["total_seconds"] = time.perf_counter() - start
    (out / "gpu.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "gpu.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    v = results["versions"]
    lines = [
        f"GPU figures: {v.get('gpu', v['device'])}, torch {v['torch']} (CUDA {v['cuda']}), cnnlab "
        f"{v['cnnlab_commit']}; decode {results['decode_seconds']:.1f} s, everything {results['total_seconds']:.0f} s",
        "",
        "| figure | value |",
        "| --- | --- |",
    ]
    add = lambda name, value: lines.append(f"| {name} | {value} |")
    for key in ("seed_recipe", "resnet18"):
        r = results.get(key, {})
        if "error" in r:
            add(key, f"failed: {r['error'][:200]}")
            continue
        add(f"{key}: test accuracy", f"{r['final_test_acc']:.2f}%")
        add(
            f"{key}: data / set-up / first-epoch excess / train / eval / wall",
            " / ".join(
                f"{r[k]:.1f} s"
                for k in (
                    "data_seconds",
                    "setup_seconds",
                    "first_epoch_excess_seconds",
                    "train_seconds",
                    "eval_seconds",
                    "to_final_evaluation_seconds",
                )
            ),
        )
    for key in ("speedrun", "speedrun_compiled"):
        r = results.get(key, {})
        if "error" in r:
            add(key, f"failed: {r['error'][:200]}")
            continue
        acc, tta = r["test_acc"], r["tta_test_acc"]
        add(f"{key} ({r['seeds']} seeds): test accuracy", f"{acc['mean']:.2f} ± {acc['std']:.2f}%")
        if tta:
            add(f"{key}: with TTA", f"{tta['mean']:.2f} ± {tta['std']:.2f}%")
        add(
            f"{key}: median time from data on disk to the final evaluation",
            f"{r['median_to_final_evaluation_seconds']:.2f} s (training {r['median_train_seconds']:.2f} s)",
        )
        for target, hit in r["time_to_mean"].items():
            add(
                f"{key}: mean first reaches {target}%",
                f"epoch {hit['epoch']}, {hit['seconds']:.2f} s" if hit else "never",
            )
    for key in ("loop_overhead", "torchrun", "torchrun_sync_bn"):
        add(key, json.dumps(results.get(key), default=str)[:300])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
