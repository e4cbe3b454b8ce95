"""Many runs of one question: a sweep is a base recipe and data, a grid of recipe fields and a number of
seeds; each trial is an ordinary run folder, trained by `cnnlab train` in a process of its own.

    SWEEP/sweep.json        the spec, with the base recipe resolved (a rerun with another spec is refused)
    SWEEP/recipes/T.toml    each trial's whole recipe (recipe_files.recipe_toml)
    SWEEP/runs/T/           each trial's run folder
    SWEEP/results.csv, variants.csv, results.json, summary.md, sweep.png   (sweep_results.py)

Rerunning a sweep skips finished trials and resumes interrupted ones exactly (`train --resume`). Several
workers share the machine without thrashing: each trial process is started with its own share of the
cores as its thread budget (OMP_NUM_THREADS, set before torch starts its pools, and --threads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CnnlabError, UsageError
from .names import shown
from .recipe_files import load_recipe, recipe_toml

SPEC_VERSION = 1


@dataclass
class SweepSpec:
    """What a sweep runs: plain data, from a TOML file or the flags (see `spec_from_toml`)."""

    recipe: str = "seed"  # the base recipe: a shipped name, a TOML file or a run folder
    overrides: dict = field(default_factory=dict)  # fields changed on the base recipe (the training flags)
    data: str = "cifar10"
    labels: str | None = None
    grid: dict = field(default_factory=dict)  # recipe field -> the values to try; variants are the product
    seeds: list = field(default_factory=lambda: [0])
    baseline: str | None = None  # the variant the others are compared with (default: the first)

    def variants(self) -> list[tuple[str, dict]]:
        """(name, fields) of every combination of the grid's values, in the grid's order."""
        if not self.grid:
            return [("base", {})]
        names = list(self.grid)
        combos = itertools.product(*(self.grid[n] for n in names))
        return [
            (",".join(f"{n}={_text(v)}" for n, v in zip(names, combo)), dict(zip(names, combo))) for combo in combos
        ]

    def trials(self) -> list[tuple[str, str, int, dict]]:
        """(trial name, variant name, seed, fields) of every trial, variant by variant, seed by seed."""
        return [
            (f"{name}_seed{s}", name, s, {**chosen, "seed": s}) for name, chosen in self.variants() for s in self.seeds
        ]

    def baseline_variant(self) -> str:
        names = [name for name, _ in self.variants()]
        if self.baseline is not None and self.baseline not in names:
            raise UsageError(f"baseline {self.baseline!r} is not a variant of this sweep: {', '.join(names)}")
        return self.baseline or names[0]


def _text(value) -> str:
    return (
        ("true" if value else "false")
        if isinstance(value, bool)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def parse_grid(items: list[str]) -> dict:
    """--grid FIELD=V1,V2 (repeatable) as {field: [values]}; values stay text until the recipe checks them."""
    grid = {}
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().replace("-", "_")
        chosen = [v.strip() for v in values.split(",") if v.strip()]
        if not name or not chosen:
            raise UsageError(f"--grid {item!r}: write FIELD=V1,V2 (for example --grid lr=0.05,0.1)")
        if name in grid:
            raise UsageError(f"--grid names {name} twice; give its values in one --grid")
        if name == "seed":
            raise UsageError("seeds are not a grid field: use --seeds N")
        if any("/" in v for v in chosen):
            raise UsageError(f"--grid {name}: values with '/' are not supported (they name trial folders)")
        grid[name] = [_value(v) for v in chosen]
    return grid


def _value(text: str):
    """A grid value as TOML reads it (0.05, 1e-3, 5000, true), else as text (cosine)."""
    from .recipe_files import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def spec_from_toml(path: str | Path) -> SweepSpec:
    """A sweep file: top-level recipe, data, labels, seeds (a count or a list) and baseline, with [grid]
    (field = [values]) and [overrides] (field = value) tables."""
    from .recipe_files import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"sweep file {shown(str(path))} cannot be read ({e}); give a TOML file") from None
    known = {f.name for f in dataclasses.fields(SweepSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"sweep file {shown(str(path))}: unknown key {unknown[0]!r}; use {', '.join(sorted(known))}")
    seeds = data.get("seeds", 1)
    data["seeds"] = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    grid = data.get("grid", {})
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise UsageError(f"sweep file {shown(str(path))}: [grid] maps each field to a list of values")
    return SweepSpec(**data)


def resolved(spec: SweepSpec) -> dict:
    """The spec as sweep.json keeps it: with the base recipe resolved, so a changed recipe file is a changed
    spec, and every trial's recipe checked (a bad value fails here, before any trial runs)."""
    base = load_recipe(spec.recipe, spec.overrides)
    for _, _, _, chosen in spec.trials():
        load_recipe(spec.recipe, {**spec.overrides, **chosen}).validate()
    return {"version": SPEC_VERSION, **dataclasses.asdict(spec), "base_recipe": base.to_dict()}


def claim_sweep_folder(folder: Path, spec: SweepSpec) -> dict:
    """Create the sweep folder with its sweep.json, or check that an existing one was made with this spec."""
    wanted = resolved(spec)
    spec_file = folder / "sweep.json"
    if spec_file.exists():
        from .runfiles import read_json

        recorded = read_json(spec_file)
        differs = [k for k in wanted if recorded.get(k) != wanted[k]]
        if differs:
            raise CnnlabError(
                f"{shown(folder)} holds a sweep with another spec ({differs[0]} differs: {recorded.get(differs[0])!r} "
                f"there, {wanted[differs[0]]!r} now); rerun it with its own spec or give another --out"
            )
        return wanted
    from .runs import atomic_write_json

    (folder / "recipes").mkdir(parents=True, exist_ok=True)
    (folder / "runs").mkdir(exist_ok=True)
    for trial, _, _, chosen in spec.trials():
        recipe = load_recipe(spec.recipe, {**spec.overrides, **chosen})
        (folder / "recipes" / f"{trial}.toml").write_text(recipe_toml(recipe), encoding="utf-8")
    atomic_write_json(spec_file, wanted)
    return wanted


def trial_state(run: Path) -> str:
    """done (summary.json written), partial (a checkpoint to resume) or new."""
    if (run / "summary.json").is_file():
        return "done"
    return "partial" if (run / "last.pt").is_file() else "new"


def worker_split(workers: str | int, trials: int) -> tuple[int, int]:
    """(processes at once, threads each). auto: one per core while there are trials for them, measured as the
    fastest way to share a 2-core CPU (BENCHMARKS.md, "Two runs on one machine")."""
    cores = os.cpu_count() or 1
    if workers == "auto":
        count = max(1, min(cores, trials))
    else:
        count = int(workers)
        if not 1 <= count <= cores:
            raise UsageError(f"--workers {workers}: give auto or a count from 1 to {cores} (this machine's cores)")
    return count, max(1, cores // count)


def run_sweep(spec: SweepSpec, folder: str | Path, workers: str | int = 1, log=print) -> dict:
    """Run every trial not yet done (resuming the interrupted ones), then write and return the results."""
    from .sweep_results import collect, write_results

    folder = Path(folder)
    claim_sweep_folder(folder, spec)
    trials = spec.trials()
    todo = [t for t in trials if trial_state(folder / "runs" / t[0]) != "done"]
    count, threads = worker_split(workers, len(todo))
    if len(todo) < len(trials):
        log(f"{len(trials) - len(todo)} of {len(trials)} trials already done; {len(todo)} to run")
    log(f"{len(todo)} trials on {count} worker(s) of {threads} thread(s) each")
    runner = _Runner(spec, folder, threads, log, len(trials))
    with runner.stop_on_signal(), ThreadPoolExecutor(max_workers=count) as pool:
        list(pool.map(runner.run, todo))
    if runner.stopped is not None:
        raise CnnlabError(
            f"stopped by signal {runner.stopped}; finished trials are kept and the others checkpointed: "
            "rerun the same command to continue"
        )
    results = collect(spec, folder)
    write_results(results, folder)
    return results


class _Runner:
    """Starts trial processes (each dies with the sweep: PR_SET_PDEATHSIG) and stops them on a signal."""

    def __init__(self, spec: SweepSpec, folder: Path, threads: int, log, total: int):
        self.spec, self.folder, self.threads, self.log, self.total = spec, folder, threads, log, total
        self.lock, self.running, self.stopped, self.finished = threading.Lock(), set(), None, 0

    def command(self, trial: str) -> list[str]:
        run = self.folder / "runs" / trial
        if trial_state(run) == "partial":
            return [sys.executable, "-m", "cnnlab", "train", "--resume", str(run), "--no-progress", "--no-plots"]
        data = ["--data", self.spec.data] + (["--labels", self.spec.labels] if self.spec.labels else [])
        return [
            sys.executable, "-m", "cnnlab", "train", "--recipe", str(self.folder / "recipes" / f"{trial}.toml"),
            *data, "--runs-dir", str(self.folder / "runs"), "--name", trial, "--threads", str(self.threads),
            "--no-progress", "--no-plots",
        ]  # fmt: skip

    def run(self, item) -> None:
        trial = item[0]
        if self.stopped is not None:
            return
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        with self.lock:
            process = subprocess.Popen(
                self.command(trial), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
            self.running.add(process)
        _, errors = process.communicate()
        with self.lock:
            self.running.discard(process)
            self.finished += 1
            done = self.finished
        last = errors.strip().splitlines()[-1] if errors.strip() else ""
        if process.returncode == 0:
            summary = json.loads((self.folder / "runs" / trial / "summary.json").read_text())
            self.log(
                f"[{done}/{self.total}] {trial}: {summary['final_test_acc']:.2f}% in {summary['wall_seconds']:.0f} s"
            )
        elif self.stopped is None:
            self.log(f"[{done}/{self.total}] {trial} failed: {last}")

    @contextlib.contextmanager
    def stop_on_signal(self):
        """While inside: SIGINT or SIGTERM stops starting trials and passes SIGTERM to the running ones, which
        checkpoint and exit (stopping.StopOnSignal)."""

        def stop(signum, _frame):
            self.stopped = signum
            with self.lock:
                for process in self.running:
                    process.send_signal(signal.SIGTERM)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _die_with_parent() -> None:
    """In the child, before exec: a SIGTERM when the sweep process dies, even by SIGKILL, so no trial goes on
    writing its run folder unwatched (it checkpoints and stops; the rerun resumes it)."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG, Linux only
    except (OSError, AttributeError):
        pass
