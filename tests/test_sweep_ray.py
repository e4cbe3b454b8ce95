"""A sweep on a real Ray cluster: a head and a second worker node started on 127.0.0.1, a worker killed in the
middle of a trial, and the sweep's results table the same as a local run of the same spec."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import run_cli
from test_sweep import _children, _sweep_args

pytest.importorskip("ray")
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """A Ray head and one more node, one CPU each, on 127.0.0.1; stopped (all Ray processes) afterwards."""
    if not RAY.is_file():
        pytest.skip("no ray command beside this Python")
    temp = tempfile.mkdtemp(prefix="/tmp/ray-")  # short: Ray's socket paths must fit in 107 bytes
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}",
                    *common], check=True, env=env, capture_output=True, timeout=120)  # fmt: skip
    try:
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", *common], check=True, env=env,
                       capture_output=True, timeout=120)  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _trial_processes(folder: Path) -> list[int]:
    """Processes training a run under `folder` (their command lines name it)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train" in command and any(str(folder).encode() in part for part in command):
            found.append(int(entry))
    return found


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


# The default suite's longest test (88 s plus 18 s of cluster start and stop on a Zen 3), which took the suite
# to 15:07 there: run it on purpose with -m slow, as after any change to the sweep's trials or to Ray's use.
@pytest.mark.slow
def test_a_sweep_on_a_ray_cluster_survives_a_killed_worker_and_matches_a_local_sweep(archive, tmp_path, ray_cluster):
    spec = ("--grid", "lr=0.05,0.1")
    local = run_cli(*_sweep_args(archive, tmp_path / "local", *spec, "--workers", "2", epochs=8, batch_size=8))
    assert local.returncode == 0, local.stderr
    out = tmp_path / "ray"
    args = _sweep_args(archive, out, *spec, "--ray", ray_cluster, epochs=8, batch_size=8)
    sweep = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = out / "runs" / "lr=0.05_seed0" / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.2)
    trainers = _trial_processes(out / "recipes" / "lr=0.05_seed0.toml")
    assert trainers, "the trial should be training now"
    worker = _parent(trainers[0])  # the Ray worker process that runs the task
    assert worker != sweep.pid and sweep.pid not in _children(worker)
    os.kill(worker, signal.SIGKILL)  # Ray retries the task; the retry waits for the orphan, then resumes its run
    output, errors = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, errors[-2000:]
    assert "as Ray tasks at 127.0.0.1:" in output

    def table(folder):
        return [(r["trial"], r["status"], r["test_acc"]) for r in csv.DictReader((folder / "results.csv").open())]

    assert table(out) == table(tmp_path / "local")  # the same numbers, trial by trial
    config = json.loads((out / "runs" / "lr=0.05_seed0" / "config.json").read_text())
    assert config.get("resumed"), "the killed worker's trial was resumed from its checkpoint"
