"""benchmarks/gpu.sh --smoke: the GPU figures' script, end to end on the CPU with tiny sizes, so that the
rare call with a GPU finds it working. About 90 s on two cores (torch.compile on the CPU is most of it), so
it is marked slow: run it with `python -m pytest -m slow tests/test_gpu_script.py` before a GPU call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_cifar_archive

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_script_runs_every_section_in_smoke_mode(tmp_path):
    data = write_cifar_archive(tmp_path / "tiny.tar.gz", n_train_per_class=104, n_test_per_class=4)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke", str(data)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("python ") and "torch " in done.stdout.splitlines()[0]
    results = json.loads((tmp_path / "out" / "gpu.json").read_text())
    failed = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    assert failed == {}, failed
    for key in (
        "seed_recipe",
        "speedrun",
        "speedrun_compiled",
        "loop_overhead",
        "resnet18",
        "torchrun",
        "torchrun_sync_bn",
    ):
        assert key in results
    assert results["speedrun"]["seeds"] == 2 and len(results["speedrun"]["runs"]) == 2
    assert set(results["loop_overhead"]) == {"speedrun-minimal", "speedrun-cnnlab"}
    table = (tmp_path / "out" / "gpu.md").read_text()
    assert "seed_recipe: test accuracy" in table and "mean first reaches 93%" in table
