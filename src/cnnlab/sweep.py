"""Many runs of one question: a sweep is a base recipe and data, variants of recipe fields (every
combination of a grid, random draws from ranges, or Optuna's TPE search: sweep_search.py) and a number of
seeds; each trial is an ordinary run folder, trained by `cnnlab train` in a process of its own
(sweep_trials.py: on this machine's cores or as Ray tasks).

    SWEEP/sweep.json        the spec, with the base recipe resolved (a rerun with another spec is refused)
    SWEEP/recipes/T.toml    each trial's whole recipe (recipe_files.recipe_toml)
    SWEEP/runs/T/           each trial's run folder; SWEEP/logs/T.log its stderr
    SWEEP/study.db          a TPE search's Optuna study (unless --storage names another database)
    SWEEP/results.csv, variants.csv, results.json, summary.md, sweep.png   (sweep_results.py)

Rerunning a sweep skips finished trials and resumes interrupted ones exactly (`train --resume`). Several
workers share the machine without thrashing: each trial process is started with its own share of the
cores as its thread budget (OMP_NUM_THREADS, set before torch starts its pools, and --threads).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CnnlabError, UsageError
from .names import shown
from .recipe_files import load_recipe, recipe_toml
from .sweep_trials import trial_state

SPEC_VERSION = 1
MAX_SAMPLE_SEED = 2**32 - 1  # what NumPy's generators, which Optuna's samplers use, accept
MAX_COUNT = 10_000  # the most seeds or drawn variants a sweep takes, from its flags or its file


@dataclass
class SweepSpec:
    """What a sweep runs: plain data, from a TOML file or the flags (see `spec_from_toml`)."""

    recipe: str = "seed"  # the base recipe: a shipped name, a TOML file or a run folder
    overrides: dict = field(default_factory=dict)  # fields changed on the base recipe (the training flags)
    data: str = "cifar10"
    labels: str | None = None
    grid: dict = field(default_factory=dict)  # recipe field -> the values to try; variants are the product
    ranges: dict = field(default_factory=dict)  # recipe field -> [low, high] or [low, high, "log"] (search only)
    search: str = "grid"  # grid: every combination; random: `samples` draws; tpe: Optuna's TPE sampler
    samples: int = 0  # variants drawn by random or tpe search
    sample_seed: int = 0  # seeds the random draws and the TPE sampler
    storage: str | None = None  # tpe: the Optuna database URL (default: sqlite file study.db in the sweep)
    prune: bool = False  # tpe: stop a trial whose curve is clearly losing (Optuna's median rule)
    seeds: list = field(default_factory=lambda: [0])
    baseline: str | None = None  # the variant the others are compared with (default: the first)

    def variants(self) -> list[tuple[str, dict]]:
        """(name, fields) of every variant: the grid's combinations in order, or the random draws. A TPE
        search chooses its variants as it goes (sweep_search.study_variants)."""
        if self.search == "random":
            return random_variants(self)
        if self.search == "tpe":
            raise UsageError("a TPE search chooses its variants as it runs; read them from its study")
        if not self.grid:
            return [("base", {})]
        names = list(self.grid)
        combos = itertools.product(*(self.grid[n] for n in names))
        return [(variant_name(dict(zip(names, combo))), dict(zip(names, combo))) for combo in combos]

    def trials(self, variants: list[tuple[str, dict]] | None = None) -> list[tuple[str, str, int, dict]]:
        """(trial name, variant name, seed, fields) of every trial, variant by variant, seed by seed."""
        variants = self.variants() if variants is None else variants
        return [(f"{name}_seed{s}", name, s, {**chosen, "seed": s}) for name, chosen in variants for s in self.seeds]

    def baseline_variant(self, variants: list[tuple[str, dict]] | None = None) -> str:
        names = [name for name, _ in (self.variants() if variants is None else variants)]
        if self.baseline is not None and self.baseline not in names:
            raise UsageError(f"baseline {self.baseline!r} is not a variant of this sweep: {', '.join(names)}")
        return self.baseline or names[0]


def spec_digest(spec: SweepSpec, length: int = 8) -> str:
    """A short hash of the spec: names the default sweep folder and a TPE search's study."""
    import hashlib

    return hashlib.sha256(json.dumps(spec.__dict__, sort_keys=True).encode()).hexdigest()[:length]


def variant_name(fields: dict) -> str:
    return ",".join(f"{n}={_text(v)}" for n, v in fields.items()) or "base"


def random_variants(spec: SweepSpec) -> list[tuple[str, dict]]:
    """`spec.samples` variants drawn from the ranges (uniform, or log-uniform) and the grid's values (one of
    each, uniformly), seeded by `sample_seed` so the same spec draws the same variants. Floats keep three
    significant digits, so a variant's name states its values exactly; a repeated draw is drawn again."""
    import random

    draw, found = random.Random(spec.sample_seed), {}
    for _ in range(100 * spec.samples):
        if len(found) == spec.samples:
            break
        fields = {name: draw.choice(values) for name, values in spec.grid.items()}
        for name, (low, high, *scale) in spec.ranges.items():
            if scale == ["log"]:
                fields[name] = float(f"{math.exp(draw.uniform(math.log(low), math.log(high))):.3g}")
            elif isinstance(low, int) and isinstance(high, int):
                fields[name] = draw.randint(low, high)
            else:
                fields[name] = float(f"{draw.uniform(low, high):.3g}")
        found.setdefault(variant_name(fields), fields)
    return list(found.items())


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
        grid[name] = [_value(v) for v in chosen]
    return grid


def parse_range(items: list[str]) -> dict:
    """--range FIELD=LOW:HIGH[:log] (repeatable) as {field: [low, high] or [low, high, "log"]}."""
    ranges = {}
    for item in items:
        name, _, bounds = item.partition("=")
        name, parts = name.strip().replace("-", "_"), bounds.split(":")
        if not name or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise UsageError(f"--range {item!r}: write FIELD=LOW:HIGH or FIELD=LOW:HIGH:log (--range lr=0.05:0.5:log)")
        if name in ranges:
            raise UsageError(f"--range names {name} twice")
        ranges[name] = [_value(parts[0]), _value(parts[1]), *parts[2:]]
    return ranges


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_fields(spec: SweepSpec) -> None:
    """Each field of the plain type it declares: a sweep file is as much a user's input as the flags are."""
    for name in ("recipe", "data", "labels", "storage", "baseline"):
        value = getattr(spec, name)
        if not isinstance(value, str) and not (value is None and name not in ("recipe", "data")):
            raise UsageError(f"{name} {value!r}: give a text (a name, a path or a URL)")
    for name in ("overrides", "grid", "ranges"):
        if not isinstance(getattr(spec, name), dict):
            raise UsageError(f"{name}: give a table of recipe fields")
    if not isinstance(spec.prune, bool):
        raise UsageError(f"prune {spec.prune!r}: give true or false")
    for name, high in (("samples", MAX_COUNT), ("sample_seed", MAX_SAMPLE_SEED)):
        if not _whole(getattr(spec, name), 0, high):  # the CLI bounds --random and --trials, not --sample-seed
            message = f"{name} {getattr(spec, name)!r}: give a whole number from 0 to {high}"
            raise UsageError(message, parameters=(name,) if name == "sample_seed" else ())
    seeds = spec.seeds
    listed = isinstance(seeds, list) and 1 <= len(seeds) <= MAX_COUNT
    if not listed or not all(_whole(s, 0, 2**63 - 1) for s in seeds) or len(set(seeds)) < len(seeds):
        raise UsageError(f"seeds {seeds!r}: give a count from 1 to {MAX_COUNT}, or a list of distinct whole numbers")
    for name, values in spec.grid.items():
        if any(isinstance(v, str) and "/" in v for v in values):
            raise UsageError(f"grid {name}: values with '/' are not supported (they name trial folders)")


def check_search(spec: SweepSpec) -> None:
    """One line for a sweep that cannot run: a field of the wrong type, an unknown kind of search, no draws,
    bad or misplaced ranges."""
    _check_fields(spec)
    if spec.search not in ("grid", "random", "tpe"):
        raise UsageError(f"search {spec.search!r}: choose grid, random or tpe")
    if spec.search == "grid" and spec.ranges:
        raise UsageError("ranges are drawn by a search: add --random N (or --search tpe --trials N)")
    if spec.search != "grid" and spec.samples < 1:
        raise UsageError(f"a {spec.search} search needs the number of variants to draw: --random N or --trials N")
    if spec.search != "grid" and not (spec.ranges or spec.grid):
        raise UsageError(f"a {spec.search} search needs something to draw: --range FIELD=LOW:HIGH or --grid")
    if spec.prune and spec.search != "tpe":
        raise UsageError("pruning stops losing trials of a TPE search: add --search tpe --trials N")
    for name, bounds in spec.ranges.items():
        low, high, *scale = bounds if isinstance(bounds, list) and len(bounds) in (2, 3) else [None, None]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
        if not numbers or not low < high or scale not in ([], ["log"]) or (scale and low <= 0):
            raise UsageError(
                f'range {name}: give [low, high] or [low, high, "log"] with finite low < high (and low > 0 for log)'
            )
        if name == "seed":
            raise UsageError("seeds are not a range field: use --seeds N")


def _value(text: str):
    """A grid value as TOML reads it (0.05, 1e-3, 5000, true), else as text (cosine)."""
    from .recipe_files import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def spec_from_toml(path: str | Path) -> SweepSpec:
    """A sweep file: top-level recipe, data, labels, seeds (a count or a list), baseline, search, samples,
    sample_seed, storage and prune, with [grid] (field = [values]), [ranges] (field = [low, high] or
    [low, high, "log"]) and [overrides] (field = value) tables."""
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
    data["seeds"] = list(range(seeds)) if _whole(seeds, 1, MAX_COUNT) else seeds  # else check_search says why
    grid = data.get("grid", {})
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise UsageError(f"sweep file {shown(str(path))}: [grid] maps each field to a list of values")
    if not isinstance(data.get("ranges", {}), dict):
        raise UsageError(f"sweep file {shown(str(path))}: [ranges] maps each field to [low, high] or [low, high, log]")
    spec = SweepSpec(**data)
    try:
        check_search(spec)
    except UsageError as e:
        raise UsageError(f"sweep file {shown(str(path))}: {e}") from None
    return spec


def resolved(spec: SweepSpec) -> dict:
    """The spec as sweep.json keeps it: with the base recipe resolved, so a changed recipe file is a changed
    spec, and every trial's recipe checked (a bad value fails here, before any trial runs). A TPE search's
    trials are not known yet: each end of its ranges and each of its grid values is checked instead."""
    check_search(spec)
    base = load_recipe(spec.recipe, spec.overrides)
    if spec.search == "tpe":
        from .sweep_search import tpe_variant_name

        spec.baseline_variant([(tpe_variant_name(k), {}) for k in range(spec.samples)])
        candidates = [{n: v} for n, values in spec.grid.items() for v in values]
        candidates += [{n: v} for n, (low, high, *_) in spec.ranges.items() for v in (low, high)]
    else:  # every variant known before any trial runs: a repeated one or a baseline not among them fails now
        variants = spec.variants()
        repeated = sorted(name for name, n in Counter(name for name, _ in variants).items() if n > 1)
        if repeated:
            raise UsageError(f"the variant {repeated[0]} comes twice: give each grid value once")
        spec.baseline_variant(variants)
        candidates = [chosen for _, _, _, chosen in spec.trials(variants)]
    for chosen in candidates:
        load_recipe(spec.recipe, {**spec.overrides, **chosen}).validate()
    return {"version": SPEC_VERSION, **dataclasses.asdict(spec), "base_recipe": base.to_dict()}


def claim_sweep_folder(folder: Path, spec: SweepSpec) -> dict:
    """Create the sweep folder with its sweep.json, or check that an existing one was made with this spec."""
    wanted = resolved(spec)
    spec_file = folder / "sweep.json"
    if spec_file.exists():
        from .runfiles import read_json

        recorded, defaults = read_json(spec_file), dataclasses.asdict(SweepSpec())  # older files lack new keys
        differs = [k for k in wanted if recorded.get(k, defaults.get(k)) != wanted[k]]
        if differs:
            raise CnnlabError(
                f"{shown(folder)} holds a sweep with another spec ({differs[0]} differs: {recorded.get(differs[0])!r} "
                f"there, {wanted[differs[0]]!r} now); rerun it with its own spec or give another --out"
            )
        return wanted
    from .runs import atomic_write_json

    # A sweep writes runs/, logs/ and its tables, never among other files; recipes/ and runs/ alone are what a
    # sweep killed before its sweep.json was written leaves.
    if folder.is_dir() and {p.name for p in folder.iterdir()} - {"recipes", "runs"}:
        raise CnnlabError(f"{shown(folder)} holds other files and no sweep.json; give a new or empty folder as --out")
    try:
        (folder / "recipes").mkdir(parents=True, exist_ok=True)
        (folder / "runs").mkdir(exist_ok=True)
    except OSError as e:
        message = f"cannot create the sweep folder {shown(folder)} ({e.strerror}); give another --out"
        raise CnnlabError(message) from None
    if spec.search != "tpe":
        write_trial_recipes(spec, folder, spec.trials())
    atomic_write_json(spec_file, wanted)
    return wanted


def write_trial_recipes(spec: SweepSpec, folder: Path, trials: list) -> None:
    """recipes/T.toml for each trial: the whole recipe it trains with, so a trial's process needs nothing else."""
    for trial, _, _, chosen in trials:
        path = folder / "recipes" / f"{trial}.toml"
        if not path.is_file():
            recipe = load_recipe(spec.recipe, {**spec.overrides, **chosen})
            path.write_text(recipe_toml(recipe), encoding="utf-8")


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


def run_sweep(
    spec: SweepSpec,
    folder: str | Path,
    workers: str | int = 1,
    log=print,
    ray: str | None = None,
    cpus_per_trial: int = 1,
    gpus_per_trial: float = 0,
) -> dict:
    """Run every trial not yet done (resuming the interrupted ones), then write and return the results.
    ray: a cluster address (or auto) to run the trials as Ray tasks instead of on this machine's cores."""
    from .sweep_results import collect, write_results
    from .sweep_trials import LocalWorkers, report_line, run_on_ray, run_trial

    folder = Path(folder)
    claim_sweep_folder(folder, spec)
    if spec.search == "tpe":
        from .sweep_search import run_search

        return run_search(spec, folder, workers, log)
    trials = spec.trials()
    if spec.search == "random" and len(trials) < spec.samples * len(spec.seeds):
        variants = len(trials) // len(spec.seeds)
        log(f"note: the ranges and grid hold only {variants} distinct variant(s) (values keep 3 significant digits), "
            f"so {variants} of the {spec.samples} asked are drawn")  # fmt: skip
    todo = [t[0] for t in trials if trial_state(folder / "runs" / t[0]) != "done"]
    if len(todo) < len(trials):
        log(f"{len(trials) - len(todo)} of {len(trials)} trials already done; {len(todo)} to run")
    finished = []

    def done(result: dict) -> None:
        finished.append(result)
        log(report_line(result, len(trials) - len(todo) + len(finished), len(trials)))

    if ray is not None:
        log(f"{len(todo)} trials as Ray tasks at {ray}, {cpus_per_trial} CPU(s) and {gpus_per_trial:g} GPU(s) each")
        run_on_ray(spec, folder, todo, ray, cpus_per_trial, gpus_per_trial, done)
    else:
        count, threads = worker_split(workers, len(todo))
        log(f"{len(todo)} trials on {count} worker(s) of {threads} thread(s) each")
        pool = LocalWorkers(count, threads)

        def work(trial: str, started) -> None:
            result = run_trial(spec, folder, trial, threads, started=started)
            if pool.stopped is None:  # a trial stopped with the sweep is not a failure
                done(result)

        pool.map(work, todo)
    results = collect(spec, folder)
    write_results(results, folder)
    return results
