"""The README's quickstart must stay what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_command = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.startswith("python3 -m venv")]
    assert len(ci_command) == 1
    assert ci_command[0] in readme


def test_quickstart_pins_torch():
    readme = (ROOT / "README.md").read_text()
    for line in readme.splitlines():
        if "pip install" in line:
            assert "torch==2.13.0" in line, line


def test_the_readme_lists_every_training_flag_as_declared():
    from cnnlab.recipe_flags import fields_markdown

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- recipe-fields:start -->\n", 1)[1].split("\n<!-- recipe-fields:end -->", 1)[0]
    assert block == fields_markdown(), "regenerate the table with: python -m cnnlab.recipe_flags"


def test_every_declared_flag_is_a_training_flag():
    import argparse
    from dataclasses import fields

    from cnnlab.cli import build_parser
    from cnnlab.recipe import Recipe, declaration
    from cnnlab.recipe_flags import flag

    train = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    flags = {option for action in train._actions for option in action.option_strings}
    assert {flag(f.name) for f in fields(Recipe) if declaration(f).cli} <= flags
    assert {"--whiten", "--no-identity-init"} <= flags
