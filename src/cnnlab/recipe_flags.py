"""How recipe fields appear outside Python: as training flags (--val-split) and as the README's table of
them, both made from the declarations in recipe.py. `python -m cnnlab.recipe_flags` prints the table."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import fields

from .recipe import GROUPS, Recipe, declaration


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def in_flags(text: str) -> str:
    """`text` with the recipe fields it names (those with an underscore: unambiguous) written as flags."""
    names = [f.name for f in fields(Recipe) if "_" in f.name]
    return re.sub(rf"(?<![\w-])({'|'.join(names)})(?![\w-])", lambda m: flag(m.group(1)), text)


def metavar(f: dataclasses.Field) -> str:
    knob = declaration(f)
    return knob.metavar or ("|".join(knob.choices) if knob.choices else f.name.upper())


def fields_markdown() -> str:
    """The README's table of training flags: one row per recipe field and model option."""
    from .models import MODELS

    lines = ["| group | flag | default | what it sets |", "| --- | --- | --- | --- |"]
    for group in GROUPS:
        for f in fields(Recipe):
            k = declaration(f)
            if k.group != group or not k.cli:
                continue
            default = (
                "on"
                if f.default is True
                else "off"
                if f.default is False
                else f"`{f.default}`"
                if f.default != ""
                else ""
            )
            choices = metavar(f).replace("|", " \\| ")  # a bare | would end the table cell
            name = f"`{flag(f.name)}`" + (
                f" / `--no-{f.name.replace('_', '-')}`" if f.type == "bool" else f" {choices}"
            )
            lines.append(f"| {group} | {name} | {default} | {in_flags(k.help)} |")
    options = {k: o for spec in MODELS.values() for k, o in spec.options.items()}
    for key, option in options.items():
        lines.append(
            f"| model option | `{flag(key)}` / `--no-{key.replace('_', '-')}` | {'on' if option.default else 'off'} | "
            f"{option.help} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(fields_markdown())
