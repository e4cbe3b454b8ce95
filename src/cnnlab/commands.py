"""The commands that make things: train, ablate, audit, data, bench, recipes, models. Each calls the
library and prints; cli_parser.py declares their flags."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import CnnlabError, CnnlabWarning, UsageError


def _overrides(args) -> dict:
    """The recipe fields (and model options) the training flags give."""
    from .recipe import Recipe

    fields = Recipe.__dataclass_fields__
    overrides = {k: v for k, v in vars(args).items() if k in fields and k != "name" and v is not None}
    options = {
        k[len("model_option_") :]: v for k, v in vars(args).items() if k.startswith("model_option_") and v is not None
    }
    if options:
        overrides["model_options"] = options
    return overrides


def _recipe(args):
    """The recipe the flags ask for: --recipe with every field flag given on top."""
    from .recipe_files import load_recipe

    return load_recipe(args.recipe or "seed", _overrides(args))


def cmd_train(args) -> int:
    if args.resume:
        from .recipe import Recipe
        from .recipe_flags import flag
        from .train import resume

        given = [
            flag(k.removeprefix("model_option_"))
            for k, v in vars(args).items()
            if v is not None
            and (k in Recipe.__dataclass_fields__ or k.startswith("model_option_") or k in ("recipe", "name"))
        ]
        if given:
            raise UsageError(f"--resume continues the run with its own recipe; drop {', '.join(given)}")
        if args.labels:
            raise UsageError("--resume continues the run with its own data and labels file; drop --labels")
        resume(
            args.resume,
            args.data,
            data_root=args.data_root,
            progress=not args.no_progress,
            plots=not args.no_plots,
            tensorboard=args.tensorboard,
        )
        return 0
    args.data = args.data or "cifar10"
    if args.name is not None:
        from .runs import check_run_name

        check_run_name(args.name)  # before any time is spent on the data
    recipe = _recipe(args)
    from .device import resolve_device
    from .train import train

    resolve_device(recipe.device)  # a --device this machine lacks fails before the data is loaded
    if args.tensorboard:
        from .tensorboard import require_tensorboard

        require_tensorboard()
    train(
        recipe,
        _load(args, recipe.image_size),
        runs_dir=args.runs_dir,
        name=args.name,
        progress=not args.no_progress,
        plots=not args.no_plots,
        tensorboard=args.tensorboard,
    )
    return 0


def cmd_ablate(args) -> int:
    from .ablate import ABLATIONS, format_table, run_ablation

    args.recipe = args.recipe or ABLATIONS[args.ablation].recipe
    recipe = _recipe(args)
    comparison = run_ablation(
        args.ablation,
        recipe,
        _load(args, recipe.image_size),
        epochs=args.epochs,
        runs_dir=args.runs_dir,
        progress=not args.no_progress,
    )
    print(format_table(comparison))
    print(f"runs, table (ablation.md, ablation.json) and plot (ablation.png) in {comparison['folder']}")
    return 0


def cmd_lr_find(args) -> int:
    import dataclasses
    import json

    from .lrfind import check_sweep, find_learning_rate
    from .names import shown
    from .plots import plot_lr_find
    from .recipe_files import recipe_toml
    from .runs import atomic_write_bytes, free_name

    recipe = _recipe(args)
    check_sweep(args.start, args.end, args.steps)
    if args.write_recipe and Path(args.write_recipe).exists():  # before the sweep's time is spent
        raise CnnlabError(f"{shown(args.write_recipe)} exists; give --write-recipe a new file name")
    found = find_learning_rate(recipe, _load(args, recipe.image_size), args.start, args.end, args.steps)
    plot = plot_lr_find(found, free_name(Path(args.plot)), title=f"{recipe.name} ({recipe.model}), lr {recipe.lr:g}")
    if args.write_recipe:
        tuned = dataclasses.replace(
            recipe, lr=float(f"{found.suggestion:.3g}"), description=f"{recipe.name}, lr from lr-find"
        )
        atomic_write_bytes(Path(args.write_recipe), recipe_toml(tuned).encode())
    if args.json:
        print(json.dumps(found.to_dict() | {"plot": str(plot), "recipe_lr": recipe.lr}))
        return 0
    ended = f"stopped at {found.rates[-1]:.3g} as the loss diverged" if found.stopped_early else "no divergence"
    print(f"swept {found.rates[0]:.3g} to {found.rates[-1]:.3g} over {len(found.rates)} steps ({ended})")
    for rule, rate in found.suggestions.items():
        print(f"  {rule:<11} {rate:.3g}")
    print(f"suggested peak rate {found.suggestion:.3g} (valley rule; the recipe's lr is {recipe.lr:g})")
    print(f"plot: {plot}" + (f"; recipe with that rate: {args.write_recipe}" if args.write_recipe else ""))
    return 0


def cmd_sweep(args) -> int:

    from .sweep import SweepSpec, check_search, parse_grid, parse_range, run_sweep, spec_digest, spec_from_toml
    from .sweep_results import format_summary, seeds_needed_table

    if args.seeds_for is not None and not (0 < args.seeds_for < 100):
        raise UsageError(f"--seeds-for {args.seeds_for}: give a difference in points between 0 and 100")
    if args.random and args.search:
        raise UsageError("--random N and --search tpe are two kinds of search; choose one")
    if args.trials and not args.search:
        raise UsageError("--trials N counts the variants of a TPE search: add --search tpe (or use --random N)")
    if args.ray and args.search:
        raise UsageError("--ray runs a grid or random sweep; a TPE search runs on this machine (share --storage)")
    if not args.ray and (args.cpus_per_trial != 1 or args.gpus_per_trial):
        raise UsageError("--cpus-per-trial and --gpus-per-trial are Ray resources: add --ray ADDRESS")
    if not 0 <= args.gpus_per_trial <= 64:
        raise UsageError(f"--gpus-per-trial {args.gpus_per_trial}: give a number from 0 to 64 (a fraction shares one)")
    if args.spec:
        given = [
            flag
            for flag, value in (("--grid", args.grid), ("--seeds", args.seeds), ("--baseline", args.baseline),
                                ("--range", args.range), ("--random", args.random), ("--search", args.search),
                                ("--trials", args.trials), ("--storage", args.storage), ("--prune", args.prune))
            if value
        ]  # fmt: skip
        if given or _overrides(args) or args.recipe:
            raise UsageError(f"--spec gives the whole sweep; drop {', '.join(given) or 'the recipe flags'}")
        spec = spec_from_toml(args.spec)
    else:
        spec = SweepSpec(
            recipe=args.recipe or "seed",
            overrides=_overrides(args),
            data=args.data or "cifar10",
            labels=args.labels,
            grid=parse_grid(args.grid or []),
            ranges=parse_range(args.range or []),
            search="random" if args.random else args.search or "grid",
            samples=args.random or args.trials or 0,
            sample_seed=args.sample_seed,
            storage=args.storage,
            prune=args.prune,
            seeds=list(range(args.seeds or 1)),
            baseline=args.baseline,
        )
        check_search(spec)
    for key in ("data", "labels", "recipe"):  # trials run from the sweep's records: absolute paths
        value = getattr(spec, key)
        if value and Path(value).exists():
            setattr(spec, key, str(Path(value).resolve()))
    # Without --out, the folder is named after the spec: the same command finds its own sweep to continue.
    out = Path(args.out) if args.out else Path("sweeps") / f"{Path(spec.recipe).name}-{spec_digest(spec)}"
    log = (lambda line: None) if args.no_progress else print
    results = run_sweep(spec, out, args.workers, log, args.ray, args.cpus_per_trial, args.gpus_per_trial)
    print(format_summary(results))
    if args.seeds_for:
        for variant, needed in seeds_needed_table(results, args.seeds_for):
            print(
                f"to detect {args.seeds_for:g} points, {variant}: {needed or 'unknown (no spread yet)'} "
                "seeds per variant"
            )
    print(f"sweep folder: {out} (results.csv, variants.csv, results.json, summary.md, sweep.png)")
    return 0 if all(t["status"] in ("done", "pruned") for t in results["trials"]) else 1


def cmd_audit(args) -> int:
    from pathlib import Path

    from .audit import audit, format_audit, model_features, save_audit

    if args.threshold is not None and not -1 <= args.threshold <= 1:
        raise UsageError(f"--threshold {args.threshold} is not a similarity; give a number between -1 and 1")
    if args.out and Path(args.out).exists():
        raise CnnlabError(f"{args.out} already exists; choose another --out (audits are never overwritten)")
    space, features, weights = args.space, None, None
    if args.model_run:
        from .openrun import load_run

        run = load_run(args.model_run, weights=args.weights)
        args.image_size = args.image_size or run.image_size
        space, weights = "model", run.weights.describe()
        features = lambda images: model_features(run.model, images, run.checkpoint["mean"], run.checkpoint["std"])
    data = _load(args, args.image_size or 32)
    result = audit(data, space, args.threshold, features)
    stem = Path(str(args.data).rstrip("/")).name.split(".")[0] + ("-model" if args.model_run else "")
    out = _audit_folder(args.out, stem)
    summary = save_audit(result, data, out, model_run=args.model_run, model_weights=weights)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "leaked_test"} | {"folder": str(out)}))
    else:
        print(format_audit(summary))
        print(
            "pairs (pairs.csv, nearest_train.csv), galleries (gallery.png, gallery_threshold.png) and "
            f"audit.json in {out}"
        )
    return 0


def _audit_folder(out: str | None, stem: str):
    """--out, or a fresh audits/<stem>-<time> folder; claimed, so two audits never share one."""
    from pathlib import Path

    from .runs import claim_run_folder

    return claim_run_folder(Path(out).parent, Path(out).name, stem) if out else claim_run_folder("audits", None, stem)


def cmd_label_audit(args) -> int:
    from pathlib import Path

    from .labelaudit import cross_validated, format_label_audit, from_runs, save_label_audit

    if args.out and Path(args.out).exists():
        raise CnnlabError(f"{args.out} already exists; choose another --out (audits are never overwritten)")
    stem = Path(str(args.data).rstrip("/")).name.split(".")[0] + "-labels"
    if args.run:
        from .openrun import load_run
        from .recipe_flags import flag

        overrides = _overrides(args)
        options = [flag(name) for name in overrides.pop("model_options", {})]
        given = (["--recipe"] if args.recipe else []) + [flag(name) for name in overrides] + options
        if given:
            raise UsageError(f"--run audits with the run's own model; drop {', '.join(given)}")
        runs = [load_run(folder, weights=args.run_weights) for folder in args.run]
        data = runs[0].dataset(_load(args, runs[0].image_size) if args.data else None)
        result = from_runs(runs, data)
    else:
        args.data = args.data or "cifar10"
        recipe = _recipe(args)
        data = _load(args, recipe.image_size)
    out = _audit_folder(args.out, stem)
    if not args.run:
        result = cross_validated(data, recipe, args.folds, out, seed=recipe.seed, progress=not args.no_progress)
    summary = save_label_audit(result, data, out)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "issues"} | {"folder": str(out)}))
    else:
        print(format_label_audit(summary))
        print(f"ranked issues (label_issues.csv), gallery.png and label_audit.json in {out}")
    return 0


def cmd_data(args) -> int:
    from .download import CIFAR_ARCHIVES, ensure_cifar
    from .splits import channel_stats

    if args.action == "download":
        if args.data not in CIFAR_ARCHIVES:
            raise UsageError(
                f"'cnnlab data download' fetches {' or '.join(CIFAR_ARCHIVES)}; '{args.data}' is not one of them"
            )
        folder = ensure_cifar(args.data, Path(args.data_root), mirror=args.mirror, md5=args.md5)
        print(f"{args.data} is ready in {folder}")
        return 0
    data = _load(args, args.image_size or 32)
    if args.action == "info":
        import torch

        info = data.summary()
        counts = lambda labels: [int(c) for c in labels.bincount(minlength=data.num_classes)]
        print(
            f"source      {info['source']}\nchecksum    {info['checksum']}\n"
            f"image size  {info['image_size']}x{info['image_size']}"
        )
        given = data.given_val
        in_val = torch.zeros(len(data.train_labels), dtype=torch.bool)
        if given is not None:
            in_val[given] = True
        val_note = f"\nval         {int(in_val.sum())} images" if given is not None else ""
        print(
            f"train       {int((~in_val).sum())} images{val_note}\ntest        {info['test']} images\n"
            f"classes     {data.num_classes}"
        )
        for split, where in info["layout"].items():
            print(f"{split:<11} {where}")
        width = max(len(c) for c in data.classes)
        train_counts = counts(data.train_labels[~in_val])
        for cls, tr, te in zip(data.classes, train_counts, counts(data.test_labels)):
            print(f"  {cls:<{width}}  train {tr:6d}  test {te:6d}")
        smallest = min(train_counts)
        ratio = f"{max(train_counts) / smallest:.1f}" if smallest else "infinite (a class has no training image)"
        print(f"imbalance   {ratio} (largest class / smallest class, training images)")
    else:
        mean, std = channel_stats(data.train_images)
        print(f"training split of {data.source}: {len(data.train_labels)} images")
        print(f"mean  ({', '.join(f'{v:.4f}' for v in mean)})\nstd   ({', '.join(f'{v:.4f}' for v in std)})")
        if data.known_stats:
            kmean, kstd = data.known_stats
            print(f"published constants used for training: mean {kmean}, std {kstd}")
    return 0


def cmd_bench(args) -> int:
    from .bench import format_table, run_bench
    from .bench_variants import DEFAULT_VARIANTS, VARIANTS
    from .runs import atomic_write_json

    if args.list:
        for v in VARIANTS.values():
            print(f"{v.name:<22} {v.description}")
        return 0
    variants = args.variants.split(",") if args.variants else DEFAULT_VARIANTS
    result = run_bench(
        variants, args.data, repeats=args.repeats, steps=args.steps, warmup=args.warmup, profile=args.profile
    )
    print(format_table(result))
    if args.json_out:
        atomic_write_json(Path(args.json_out), result)
    return 0


def cmd_recipes(args) -> int:
    import warnings

    from .recipe_files import load_recipe, shipped_recipes

    for name in sorted(shipped_recipes()):
        with warnings.catch_warnings(record=True) as caught:  # what its form for this kind of CPU says here
            warnings.simplefilter("always", CnnlabWarning)
            description = load_recipe(name).description  # in the form for this CPU, where it has several
        print(f"{name:<14} {description}")
        for warning in caught:  # not measured on this kind of CPU, or what was measured on it
            print(f"{'':<14} note: {warning.message}")
    return 0


def cmd_models(args) -> int:
    from .models import MODELS, build_model, count_parameters

    options = lambda spec: (
        f"; options: {', '.join(f'{k} ({o.default})' for k, o in spec.options.items())}" if spec.options else ""
    )
    for name, spec in sorted(MODELS.items()):
        print(f"{name:<17} {spec.description}{options(spec)}")
    example = "speedrun-48-192-192"
    print(
        f"{'speedrun-W1-W2-W3':<17} the speedrun net with these stage widths "
        f"({example}: {count_parameters(build_model(example, 10)):,} parameters){options(MODELS['speedrun'])}"
    )
    print(f"{'tv:NAME':<17} a torchvision model by name (needs an importable torchvision)")
    return 0


def _load(args, image_size: int):
    from .data import load_dataset

    return load_dataset(args.data, root=args.data_root, image_size=image_size, mirror=args.mirror, labels=args.labels)
