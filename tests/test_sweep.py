"""Sweeps: the statistics against SciPy and worked cases, the spec, and real sweeps through the CLI (parallel
workers, a rerun that skips, a changed spec refused, a SIGKILLed sweep continued)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli

from cnnlab.errors import UsageError
from cnnlab.stats import compare, seeds_to_detect, summarise, t_quantile
from cnnlab.sweep import SweepSpec, parse_grid, spec_from_toml


def test_student_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3.5, 4, 9, 29.3, 200):
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)


def test_a_worked_summary_and_welch_interval():
    s = summarise([1.0, 2.0, 3.0])  # mean 2, std 1, half-width t(0.975, 2) / sqrt(3) = 4.3027 / 1.7321
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0) and s.high - 2 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    stats = pytest.importorskip("scipy.stats")
    a, b = [94.1, 94.0, 94.3, 94.2, 94.15], [93.9, 93.85, 94.0, 93.95, 93.8]
    c = compare(a, b)
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (c.welch_low, c.welch_high) == pytest.approx((welch.low, welch.high), rel=1e-6)
    assert c.verdict == "better" and c.bootstrap_low > 0 and c.words(5, 5).startswith("better: +0.25 points")


def test_an_unresolved_difference_says_how_many_seeds_would_resolve_it():
    c = compare([84.1, 84.6, 83.9, 84.4, 84.2], [84.0, 84.3, 84.5, 83.8, 84.1])
    assert c.verdict == "no detectable difference" and c.welch_low < 0 < c.welch_high
    assert "no detectable difference at n = 5" in c.words(5, 5) and c.seeds_needed > 5
    assert seeds_to_detect(0.1, 0.15) == math.ceil(2 * ((1.959964 + 0.841621) * 1.5) ** 2)
    assert seeds_to_detect(0.0, 0.15) is None


def test_the_grid_the_variants_and_a_sweep_file(tmp_path):
    grid = parse_grid(["lr=0.05,0.1", "schedule=cosine,linear"])
    assert grid == {"lr": [0.05, 0.1], "schedule": ["cosine", "linear"]}
    spec = SweepSpec(grid=grid, seeds=[0, 1])
    assert [name for name, _ in spec.variants()][:2] == ["lr=0.05,schedule=cosine", "lr=0.05,schedule=linear"]
    assert len(spec.trials()) == 8 and spec.trials()[1][0] == "lr=0.05,schedule=cosine_seed1"
    for bad, message in ((["lr"], "FIELD=V1,V2"), (["seed=1,2"], "--seeds"), (["lr=1", "lr=2"], "twice")):
        with pytest.raises(UsageError, match=message):
            parse_grid(bad)
    (tmp_path / "s.toml").write_text(
        'recipe = "seed"\nseeds = 3\nbaseline = "label_smoothing=0"\n[grid]\nlabel_smoothing = [0, 0.1]\n'
    )
    spec = spec_from_toml(tmp_path / "s.toml")
    assert spec.seeds == [0, 1, 2] and spec.baseline_variant() == "label_smoothing=0"
    (tmp_path / "bad.toml").write_text("seed = 3\n")
    with pytest.raises(UsageError, match="unknown key 'seed'"):
        spec_from_toml(tmp_path / "bad.toml")


@pytest.mark.parametrize(
    "body, message",
    [
        ("seeds = -1", "seeds -1: give a count from 1 to 10000"),
        ("seeds = 100000000000", "seeds 100000000000: give a count"),  # was a MemoryError
        ("seeds = []", "seeds \\[\\]: give a count"),  # was a sweep of no trials, exit 0
        ("seeds = [0, 0]", "seeds \\[0, 0\\]: .* distinct whole numbers"),
        ('seeds = "x"', "seeds 'x'"),
        ("recipe = 5", "recipe 5: give a text"),  # was a TypeError
        ("overrides = 3", "overrides: give a table"),
        ('search = "random"\nsamples = "3"\n[ranges]\nlr = [0.1, 1.0]', "samples '3': give a whole number"),
        ('prune = "yes"', "prune 'yes': give true or false"),
        ("sample_seed = -3", "sample_seed -3: give a whole number from 0 to 4294967295"),
        ('[grid]\naugment = ["a/b"]', "grid augment: values with '/'"),
    ],
)
def test_a_bad_sweep_file_is_one_usage_error_naming_the_file_and_the_key(tmp_path, body, message):
    (tmp_path / "s.toml").write_text(body + "\n")
    with pytest.raises(UsageError, match=f"^sweep file {re.escape(str(tmp_path / 's.toml'))}: {message}"):
        spec_from_toml(tmp_path / "s.toml")


@pytest.mark.parametrize(
    "spec, message",
    [
        (SweepSpec(grid={"lr": [0.1, 0.1]}), "the variant lr=0.1 comes twice"),
        (SweepSpec(grid={"lr": [0.1, 0.2]}, baseline="lr=0.3"), "baseline 'lr=0.3' is not a variant"),
        (
            SweepSpec(search="tpe", samples=2, ranges={"lr": [0.1, 1.0]}, baseline="tpe002"),
            "is not a variant of this sweep: tpe000, tpe001",
        ),
    ],
)
def test_a_sweep_whose_variants_cannot_be_compared_is_refused_before_any_trial(spec, message):
    from cnnlab.sweep import resolved

    with pytest.raises(UsageError, match=message):
        resolved(spec)  # claim_sweep_folder calls it first: nothing is written, nothing trains


@pytest.mark.parametrize(
    "summary",
    ['{"final_test_acc": 12.5, "train', '{"final_test_acc": "12.5", "train_seconds": 1, "wall_seconds": 2}',
     '{"final_test_acc": 1e999, "train_seconds": 1, "wall_seconds": 2}', '{"train_seconds": 1, "wall_seconds": 2}',
     '{"final_test_acc": 12.5, "final_val_acc": true, "train_seconds": 1, "wall_seconds": 2}', "[]"],
)  # fmt: skip
def test_a_damaged_trial_summary_is_one_line_saying_how_to_train_that_trial_again(tmp_path, summary):
    from cnnlab.errors import CnnlabError
    from cnnlab.sweep import claim_sweep_folder
    from cnnlab.sweep_results import read_sweep

    spec = SweepSpec(grid={"lr": [0.05, 0.1]})
    claim_sweep_folder(tmp_path, spec)
    run = tmp_path / "runs" / "lr=0.05_seed0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(summary)  # a finished trial's file, cut short or edited by hand
    with pytest.raises(
        CnnlabError, match=f"^{re.escape(str(run))}/summary.json is damaged .*; delete {re.escape(str(run))} and rerun"
    ):
        read_sweep(tmp_path)  # what the rerun and `cnnlab report` read; before, a traceback


def test_report_of_a_sweep_with_a_damaged_trial_exits_1_with_one_line(tmp_path):
    from cnnlab.sweep import claim_sweep_folder

    claim_sweep_folder(tmp_path, SweepSpec(grid={"lr": [0.05, 0.1]}))
    (tmp_path / "runs" / "lr=0.1_seed0").mkdir(parents=True)
    (tmp_path / "runs" / "lr=0.1_seed0" / "summary.json").write_text("{")
    result = run_cli("report", str(tmp_path))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and "is damaged" in result.stderr
    assert not (tmp_path / "report.html").exists()


def test_a_sweep_folder_is_new_empty_or_its_own(tmp_path):
    """--out / once wrote a sweep's runs/, logs/ and tables among the root's folders; a file was a traceback."""
    from cnnlab.errors import CnnlabError
    from cnnlab.sweep import claim_sweep_folder

    spec = SweepSpec(grid={"lr": [0.05, 0.1]})
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    (tmp_path / "a_file").write_text("mine")
    for folder, message in (("theirs", "holds other files and no sweep.json"), ("a_file", "cannot create the sweep")):
        with pytest.raises(CnnlabError, match=message):
            claim_sweep_folder(tmp_path / folder, spec)
    assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == ["notes.txt"]
    assert (tmp_path / "a_file").read_text() == "mine"
    (tmp_path / "killed" / "recipes").mkdir(parents=True)  # what a sweep killed before its sweep.json leaves
    claim_sweep_folder(tmp_path / "killed", spec)
    assert (tmp_path / "killed" / "sweep.json").is_file() and (
        tmp_path / "killed" / "recipes" / "lr=0.1_seed0.toml"
    ).is_file()


def _sweep_args(archive, out, *extra, epochs: int = 1, batch_size: int = 64):
    return (
        "sweep",
        "--data",
        str(archive),
        "--epochs",
        str(epochs),
        "--batch-size",
        str(batch_size),
        "--out",
        str(out),
        *extra,
    )


def test_a_sweep_runs_every_trial_as_a_run_then_skips_them_and_refuses_another_spec(archive, tmp_path):
    out = tmp_path / "sweep"
    done = run_cli(*_sweep_args(archive, out, "--grid", "lr=0.05,0.1", "--seeds", "2", "--workers", "2"))
    assert done.returncode == 0, done.stderr
    assert "on 2 worker(s) of 1 thread(s) each" in done.stdout and "lr=0.1 against lr=0.05:" in done.stdout
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in rows] == ["done"] * 4 and {r["seed"] for r in rows} == {"0", "1"}
    variants = list(csv.DictReader((out / "variants.csv").open()))
    assert [v["variant"] for v in variants] == ["lr=0.05", "lr=0.1"] and variants[1]["verdict"]
    for row in rows:  # every trial an ordinary run folder, with its own thread budget recorded
        config = json.loads((out / "runs" / row["trial"] / "config.json").read_text())
        assert config["recipe"]["seed"] == int(row["seed"]) and config["threads"] == 1
    assert (out / "sweep.png").is_file() and (out / "summary.md").read_text().startswith("score: final test acc")
    before = (out / "results.json").read_text()
    again = run_cli(*_sweep_args(archive, out, "--grid", "lr=0.05,0.1", "--seeds", "2"))
    assert again.returncode == 0 and "4 of 4 trials already done" in again.stdout
    assert (out / "results.json").read_text() == before
    changed = run_cli(*_sweep_args(archive, out, "--grid", "lr=0.05,0.2", "--seeds", "2"))
    assert changed.returncode == 1 and "another spec (grid differs" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1


# The longest grid-sweep test (95 s of the default suite's 15 minutes on a Zen 3). Its path, a SIGKILLed sweep whose
# trial checkpoints and is resumed by the rerun, stays in the default suite through test_sweep_search's TPE test.
@pytest.mark.slow
def test_a_killed_sweep_continues_where_it_stopped(archive, tmp_path):
    out = tmp_path / "sweep"
    args = _sweep_args(archive, out, "--seeds", "2", epochs=12, batch_size=8)
    sweep = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = out / "runs" / "base_seed0" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (first.is_file() and first.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(sweep.pid, signal.SIGKILL)  # the trial process is told (PR_SET_PDEATHSIG), checkpoints and stops
    sweep.wait()
    time.sleep(3)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in rows] == ["done", "done"]
    config = json.loads((out / "runs" / "base_seed0" / "config.json").read_text())
    summary = json.loads((out / "runs" / "base_seed0" / "summary.json").read_text())
    assert summary["epochs"] == 12 and config.get("resumed"), "the interrupted trial was resumed, not restarted"


def test_the_readmes_sweep_file_is_a_valid_spec(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "sweep.toml").write_text(block)
    spec = spec_from_toml(tmp_path / "sweep.toml")
    assert spec.seeds == [0, 1, 2, 3, 4] and spec.baseline_variant() == "label_smoothing=0"
    assert len(spec.trials()) == 10 and spec.overrides == {"epochs": 10}


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_a_killed_trial_is_reported_and_resumed_by_the_rerun(archive, tmp_path):
    out = tmp_path / "sweep"
    args = _sweep_args(archive, out, epochs=5, batch_size=8)
    sweep = subprocess.Popen([sys.executable, "-m", "cnnlab", *args], stdout=subprocess.PIPE, text=True)
    metrics = out / "runs" / "base_seed0" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.2)
    for child in _children(sweep.pid):
        os.kill(child, signal.SIGKILL)  # the trial dies without a word; the sweep goes on and says so
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 1 and "base_seed0 failed" in output and "not finished: base_seed0" in output
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "runs" / "base_seed0" / "summary.json").read_text())["epochs"] == 5
