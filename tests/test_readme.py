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
