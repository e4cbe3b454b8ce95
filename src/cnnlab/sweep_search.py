"""A TPE search: Optuna's Tree-structured Parzen Estimator chooses each variant from the ranges and grid
values, from the scores of the variants before it. Each Optuna trial is one variant (tpe000, tpe001, ...),
trained once per seed as ordinary sweep trials; its value is the mean score of its seeds.

The study lives in SWEEP/study.db (SQLite), or in any database URL given as storage, which several
machines can share when the sweep folder is on storage they all see. A rerun reloads the study: finished
variants are kept and a variant interrupted mid-run is resumed from its checkpoints, not asked again.

Pruning (optional) reports the first seed's held-out accuracy after each epoch and stops a variant whose
curve falls below the median of the earlier ones at the same epoch (Optuna's MedianPruner, after three
complete variants and two epochs). It trades the ranking's accuracy for time: a slow starter that would
have won can be stopped, and its score is not counted."""

from __future__ import annotations

import statistics
import threading
from pathlib import Path

from .errors import CnnlabError, UsageError
from .names import shown

PRUNE_AFTER_VARIANTS, PRUNE_AFTER_EPOCHS = 3, 2


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UsageError("--search tpe needs Optuna: pip install 'cnnlab[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(spec, folder: Path, create: bool = True):
    """The sweep's study, created or reloaded (create=False: reloaded only, as a report writes nothing). Its
    name comes from the spec, so a shared database can hold several sweeps' studies apart."""
    optuna = _optuna()
    default = Path(folder) / "study.db"
    runs = Path(folder) / "runs"
    if spec.storage is None and not default.exists() and (not create or (runs.is_dir() and any(runs.iterdir()))):
        raise CnnlabError(  # a new study would name other values tpe000, tpe001, ... than the runs trained
            f"{shown(default)} is missing: it holds this TPE search's variants and scores; restore it from a copy, "
            "or give another --out to search again"
        )
    storage = spec.storage or f"sqlite:///{default.resolve()}"
    from .sweep import spec_digest

    name = f"cnnlab-{spec_digest(spec, 12)}"
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_VARIANTS, n_warmup_steps=PRUNE_AFTER_EPOCHS)
        if spec.prune
        else optuna.pruners.NopPruner()
    )
    try:
        return optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=_sampler(spec, 0),
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
    except Exception as e:  # a database URL that cannot be opened: its driver's own error type
        message = f"cannot open the study database {storage} ({type(e).__name__}); give another --storage"
        raise CnnlabError(message) from None


def distributions(spec) -> dict:
    optuna = _optuna()
    found = {name: optuna.distributions.CategoricalDistribution(values) for name, values in spec.grid.items()}
    for name, (low, high, *scale) in spec.ranges.items():
        if isinstance(low, int) and isinstance(high, int) and not scale:
            found[name] = optuna.distributions.IntDistribution(low, high)
        else:
            found[name] = optuna.distributions.FloatDistribution(float(low), float(high), log=scale == ["log"])
    return found


def variant_trials(study) -> list:
    """The study's trials that name their variant. A sweep killed between asking a trial and naming it
    leaves one without: it never trained, so it is no variant (the next one is asked instead)."""
    return [t for t in study.get_trials(deepcopy=False) if {"variant", "fields"} <= t.user_attrs.keys()]


def study_variants(trials: list) -> list[tuple[str, dict]]:
    """(name, fields) of each of the study's variant trials (`variant_trials`), in order."""
    return [(t.user_attrs["variant"], t.user_attrs["fields"]) for t in trials]


def _sampler(spec, variant_number: int):
    """The TPE sampler that asks for variant `variant_number`, seeded by the sample seed and that number.

    A study keeps its trials but not its sampler's random state, so a sampler seeded once per process
    would draw the first variants again after a rerun (Optuna issue 3255): an interrupted search would
    train tpe000's values twice. Seeded per variant, tpe001 is the same draw whether or not the search
    was interrupted before it."""
    import numpy as np

    seed = int(np.random.SeedSequence([spec.sample_seed, variant_number]).generate_state(1)[0])
    return _optuna().samplers.TPESampler(seed=seed)


def tpe_variant_name(number: int) -> str:
    return f"tpe{number:03d}"


def ask_variant(study, spec) -> object:
    """The study's next variant (an Optuna trial), named tpe000, tpe001, ... with the values it trains with."""
    study.sampler = _sampler(spec, len(study.get_trials(deepcopy=False)))
    trial = study.ask(distributions(spec))
    fields = {n: float(f"{v:.3g}") if isinstance(v, float) else v for n, v in trial.params.items()}
    trial.set_user_attr("variant", tpe_variant_name(trial.number))
    trial.set_user_attr("fields", fields)  # what the runs train with: three significant digits, as random draws
    return trial


def _tell(study, trial, lock, **outcome) -> None:
    """Record a variant's outcome. One already finished is left as is: another machine sharing the study
    finished it first, or this rerun trained a finished variant's missing runs again."""
    import optuna

    with lock:
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            return
        try:  # the race with another machine
            study.tell(trial, **outcome)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass


def run_search(spec, folder: Path, workers, log) -> dict:
    """Ask, train and tell until the study holds `spec.samples` finished variants; write the results."""
    from .recipe import count_or_fraction
    from .recipe_files import load_recipe
    from .sweep import worker_split, write_trial_recipes
    from .sweep_results import read_sweep, trial_score, write_results
    from .sweep_trials import LocalWorkers, report_line, run_trial, trial_state

    optuna = _optuna()
    study = open_study(spec, folder)
    lock = threading.Lock()  # one thread at a time talks to the study
    count, threads = worker_split(workers, spec.samples)
    pool = LocalWorkers(count, threads)
    log(f"TPE search: {spec.samples} variants x {len(spec.seeds)} seed(s), {count} worker(s) of {threads} thread(s)")
    if count_or_fraction(load_recipe(spec.recipe, spec.overrides).val_split, "val_split") == 0:
        log("note: no validation split, so the search chooses on the test split; --val-split 0.1 keeps test honest")

    def work(trial, started) -> None:
        variant, fields = trial.user_attrs["variant"], trial.user_attrs["fields"]
        trials = spec.trials([(variant, fields)])
        write_trial_recipes(spec, folder, trials)
        scores = []
        for k, (name, *_) in enumerate(trials):

            def pruning(row, k=k):  # the first seed's curve decides
                value = row.get("val_acc", row.get("test_acc"))
                if not spec.prune or k or value is None or trial._trial_id in retrained:
                    return False
                with lock:
                    trial.report(value, row["epoch"])
                    return trial.should_prune()

            result = run_trial(spec, folder, name, threads, pruning, started)
            if pool.stopped is not None:
                return  # left RUNNING in the study: the rerun resumes it
            log(report_line(result, len(scores) + 1, len(trials)))
            if "summary" not in result:
                state = optuna.trial.TrialState.PRUNED if result["stopped"] else optuna.trial.TrialState.FAIL
                _tell(study, trial, lock, state=state)
                return
            scores.append(trial_score(result["summary"]))
        _tell(study, trial, lock, values=statistics.mean(scores))

    def runs_done(t) -> bool:
        trials = spec.trials([(t.user_attrs["variant"], t.user_attrs["fields"])])
        return all(trial_state(folder / "runs" / name) == "done" for name, *_ in trials)

    # A variant the study holds as finished whose runs are not all done: a trial failed (a crashed process)
    # or a damaged run was deleted. A rerun trains it again, as a grid sweep's rerun does; the study keeps
    # its first outcome (Optuna cannot reopen a finished trial) and the results table reads the new runs.
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    lost = [t for t in variant_trials(study) if t.state in finished and not runs_done(t)]
    retrained = {t._trial_id for t in lost}
    if lost:
        log(f"{len(lost)} finished variant(s) without all their runs (failed or deleted): training them again")
        pool.map(work, [optuna.trial.Trial(study, t._trial_id) for t in lost])
    while True:
        asked = variant_trials(study)
        if sum(t.state.is_finished() for t in asked) >= spec.samples:
            break
        interrupted = [t for t in asked if t.state == optuna.trial.TrialState.RUNNING][:count]
        batch = [optuna.trial.Trial(study, t._trial_id) for t in interrupted]  # resumed, not asked again
        batch += [ask_variant(study, spec) for _ in range(min(count - len(batch), spec.samples - len(asked)))]
        pool.map(work, batch)
    results = read_sweep(folder)[1]
    write_results(results, folder)
    return results
