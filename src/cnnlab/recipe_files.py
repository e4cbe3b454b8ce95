"""Recipes from files and plain data: a shipped recipe by name or any TOML file, with overrides on top, and
a run's saved recipe read back. Lengthening or shortening a recipe keeps its shape (`rescaled`)."""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import fields
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import CnnlabWarning, UsageError
from .recipe import Recipe, declaration


def shipped_recipes() -> dict[str, Path]:
    folder = resources.files("cnnlab") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def load_recipe(name_or_path: str = "seed", overrides: dict | None = None, cpu: str | None = None) -> Recipe:
    """Load a shipped recipe by name, a TOML file by path, or a run folder's recipe (the run's config.json),
    then apply `overrides` (None values skipped).

    A file's CPU form (its [cpu] fields, and its [cpu.KIND] table for `cpu`, a device.CPU_KINDS name;
    default: this machine's kind, when the run trains on its CPU) goes on top of the file's own fields
    before the overrides do (`for_cpu`).

    An `epochs` override that changes the recipe's length scales its epoch-denominated fields
    (warm-up, early crops, the whitening bias's epochs) unless they are overridden too, so a shortened
    recipe keeps its shape; a CnnlabWarning says what changed."""
    shipped = shipped_recipes()
    path = shipped.get(name_or_path) or Path(name_or_path)
    if path.is_dir() and (path / "config.json").is_file():
        data = _run_recipe(path)
    elif path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
            raise UsageError(f"recipe {path} is not valid TOML ({e}); fix the file") from None
        data.setdefault("name", path.stem)
        device = (overrides or {}).get("device") or data.get("device", "auto")
        data = for_cpu(data, cpu, where=str(path), device=device)
    else:
        raise UsageError(
            f"unknown recipe '{name_or_path}': use one of {', '.join(sorted(shipped))}, the path of a TOML file "
            "or a run folder",
            parameters=("recipe",),
        )
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "epochs" in overrides:
        data = rescaled(data, overrides["epochs"], set(overrides), where=data["name"])
    return recipe_from_dict(data, overrides, where=str(path))


def for_cpu(data: dict, cpu: str | None = None, where: str = "the recipe", device: str = "auto") -> dict:
    """A recipe file's fields with its CPU form on top, when the run trains on a CPU.

    A recipe whose fastest measured form differs by device keeps the fields that differ under [cpu]: plain
    fields there hold for any CPU (the GPU recipe `speedrun` evaluates in smaller batches on one), and a
    [cpu.KIND] table, on top of them, for one kind of CPU (an empty table: the fields as measured there).
    A table's `note`, a string, is said as a warning whenever that form is taken: what was measured on that
    kind when it falls short of what the recipe promises. On a kind without a table the recipe keeps its
    CPU fields, and a warning says which kinds were measured.

    `cpu` is a device.CPU_KINDS name, the form to take; by default, this machine's kind when `device` (the
    recipe's) trains on its CPU, and no CPU form at all when it trains on a GPU."""
    from .device import CPU_KINDS, cpu_kind, trains_on_cpu

    data, section = dict(data), data.get("cpu")
    if section is None:
        return data
    del data["cpu"]
    if not isinstance(section, dict):
        raise UsageError(f"{where}: cpu should be a table: [cpu] with fields for any CPU, [cpu.KIND] for one kind")
    tables = {name: value for name, value in section.items() if name in CPU_KINDS}
    any_cpu = _with_table(data, {k: v for k, v in section.items() if k not in CPU_KINDS}, f"{where} [cpu]")
    for name, value in section.items():
        if name in tables and not isinstance(value, dict):
            raise UsageError(f"{where}: [cpu.{name}] should be a table of fields, not {value!r}")
        if name not in tables and isinstance(value, dict) and name != "model_options":
            raise UsageError(f"{where}: unknown CPU kind '{name}' in [cpu]; the kinds are {', '.join(CPU_KINDS)}")
    if cpu is not None and cpu not in CPU_KINDS:
        raise UsageError(f"unknown CPU kind '{cpu}': use one of {', '.join(CPU_KINDS)}")
    notes = {name: table.get("note") for name, table in tables.items()}
    for name, note in notes.items():
        if note is not None and not isinstance(note, str):
            raise UsageError(f"{where}: [cpu.{name}] note should be a string, the line said on that kind")
    forms = {
        name: _with_table(any_cpu, {k: v for k, v in table.items() if k != "note"}, f"{where} [cpu.{name}]")
        for name, table in tables.items()
    }
    recipe_from_dict(any_cpu, where=f"{where} [cpu]")
    for name, form in forms.items():  # every form checked, not only this machine's: a typo shows anywhere
        recipe_from_dict(form, where=f"{where} [cpu.{name}]")
    if cpu is None and not trains_on_cpu(device):
        return data
    kind = cpu or cpu_kind()
    if tables and kind not in forms:
        warnings.warn(
            f"{data['name']} was measured on {', '.join(tables)} CPUs, not on one like this ({kind}): it runs "
            "as written, and its measured time and accuracy may not hold here (BENCHMARKS.md)",
            CnnlabWarning,
            stacklevel=3,
        )
    if notes.get(kind):
        warnings.warn(f"{data['name']} on this kind of CPU ({kind}): {notes[kind]}", CnnlabWarning, stacklevel=3)
    return forms.get(kind, any_cpu)


def _with_table(data: dict, table: dict, where: str) -> dict:
    """`data` with a [cpu] or [cpu.KIND] table's fields on top; model_options are merged, as overrides' are."""
    merged = {**data, **table}
    if "model_options" in table:
        merged["model_options"] = {
            **_table(data.get("model_options", {}), where),
            **_table(table["model_options"], where),
        }
    return merged


def _run_recipe(folder: Path) -> dict:
    """The recipe a run folder's config.json records, as plain data."""
    from .runfiles import read_json

    recipe = read_json(folder / "config.json").get("recipe")
    if not isinstance(recipe, dict):
        raise UsageError(f"{folder / 'config.json'} records no recipe; give a recipe name or TOML file")
    return as_the_run_trained(recipe)


def as_the_run_trained(recipe: dict) -> dict:
    """A run's saved recipe (plain data) with the model switches the run predates set as they were then
    (models.Option.before), so that it rebuilds, resumes or repeats the network the run really trained."""
    from .models import saved_run_options

    options = recipe.get("model_options", {})
    if not isinstance(options, dict):
        return dict(recipe)  # recipe_from_dict says what is wrong with it
    try:
        then = saved_run_options(str(recipe.get("model")), options)
    except UsageError:
        return dict(recipe)  # an unknown model: validate names it
    return {**recipe, "model_options": {**options, **then}}


def rescaled(data: dict, epochs: int, keep: set[str] = frozenset(), where: str = "the recipe") -> dict:
    """`data` (a recipe's fields) made `epochs` long: each epoch-denominated field not in `keep` scales with
    the length, so the schedule keeps its shape (said in one warning when anything changes)."""
    default_epochs = Recipe.__dataclass_fields__["epochs"].default
    old = data.get("epochs", default_epochs)
    if (
        not isinstance(old, int)
        or not isinstance(epochs, int)
        or isinstance(epochs, bool)
        or epochs < 1
        or old == epochs
    ):
        return data
    data, changed = dict(data), []
    for f in fields(Recipe):
        value = data.get(f.name, 0)
        if not declaration(f).epochs or f.name in keep or not isinstance(value, (int, float)) or not value:
            continue
        scaled = value * epochs / old
        if f.type == "int":
            scaled = min(max(1, round(scaled)), epochs - 1)
        data[f.name] = scaled
        changed.append(f"{f.name} {value:g} -> {scaled:g}")
    if data.get("early_crop_epochs", 0) == 0 and data.get("early_crop"):
        data["early_crop"] = 0
        changed.append("early_crop off (no epoch is left for it)")
    if changed:
        warnings.warn(
            f"{where} is {old} epochs; at {epochs} its epoch-denominated fields scale with it: {', '.join(changed)}",
            CnnlabWarning,
            stacklevel=3,
        )
    return data


# Fields that older cnnlab versions kept on every recipe and are now the speedrun models' own options.
LEGACY_MODEL_OPTIONS = ("whiten", "identity_init")


def recipe_from_dict(data: dict, overrides: dict | None = None, where: str = "recipe") -> Recipe:
    """A validated Recipe from plain data (a TOML file's, a run's saved recipe), with `overrides` on top
    (model_options are merged, not replaced)."""
    from .models import model_spec

    known = {f.name: f for f in fields(Recipe)}
    merged = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    options = dict(_table(data.get("model_options", {}), where))
    options.update(_table((overrides or {}).get("model_options") or {}, where))
    for key in LEGACY_MODEL_OPTIONS:  # a flat `whiten = true` becomes a model option where the model has it
        if key in merged:
            value = merged.pop(key)
            try:
                has_it = key in model_spec(str(merged.get("model", known["model"].default))).options
            except UsageError:
                has_it = True  # the unknown model is reported by validate
            if has_it and key not in options:
                options[key] = value
            elif not has_it and value is not True:  # older runs stored the ignored default: drop only that
                options[key] = value  # and let validate say that this model has no such option
    merged["model_options"] = options
    values = {}
    for key, value in merged.items():
        if key not in known:
            raise UsageError(f"{where}: unknown field '{key}'; known fields are {', '.join(known)}")
        values[key] = _coerce(key, value, known[key].type, where)
    return Recipe(**values).validate()


def _table(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise UsageError(f"{where}: model_options should be a table of true/false switches, got {value!r}")
    return value


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
    elif type_name == "dict":
        if isinstance(value, dict):
            return dict(value)
    raise UsageError(f"{where}: field '{key}' should be {type_name}, got {value!r}")


def recipe_toml(recipe: Recipe) -> str:
    """The recipe as a TOML file that load_recipe reads back into the same recipe."""
    value = lambda v: ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)  # JSON strings are TOML's
    lines = [f"{key} = {value(v)}" for key, v in recipe.to_dict().items() if key != "model_options"]
    if recipe.model_options:
        lines += ["", "[model_options]", *(f"{key} = {value(v)}" for key, v in recipe.model_options.items())]
    return "\n".join(lines) + "\n"
