"""Searches: random draws from ranges (seeded, exact names), a TPE search through Optuna with its study in
SQLite (rerun, SIGKILL and resume), the pruning mechanism on a real trial, and the sweep's HTML report in a
real headless browser."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli
from test_report import open_in_browser
from test_sweep import _sweep_args

from cnnlab.errors import UsageError
from cnnlab.sweep import SweepSpec, check_search, parse_range, random_variants


def test_random_draws_are_seeded_inside_their_ranges_and_named_by_their_values():
    spec = SweepSpec(
        search="random", samples=6, ranges={"lr": [0.01, 1.0, "log"], "epochs": [2, 9]}, grid={"schedule": ["a", "b"]}
    )
    drawn = random_variants(spec)
    assert drawn == random_variants(spec) and len(drawn) == 6  # the same spec draws the same variants
    assert random_variants(SweepSpec(**{**spec.__dict__, "sample_seed": 1})) != drawn
    for name, fields in drawn:
        assert 0.01 <= fields["lr"] <= 1.0 and fields["lr"] == float(f"{fields['lr']:.3g}")
        assert isinstance(fields["epochs"], int) and 2 <= fields["epochs"] <= 9 and fields["schedule"] in "ab"
        assert name == f"schedule={fields['schedule']},lr={fields['lr']:g},epochs={fields['epochs']}"
    assert [t[0] for t in spec.trials()][0] == f"{drawn[0][0]}_seed0"


@pytest.mark.parametrize(
    "items, message",
    [(["lr=0.1"], "LOW:HIGH"), (["lr=0.1:1:ln"], "LOW:HIGH:log"), (["lr=1:2", "lr=3:4"], "twice")],
)
def test_a_bad_range_flag_is_one_usage_error(items, message):
    with pytest.raises(UsageError, match=message):
        parse_range(items)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"ranges": {"lr": [0.1, 1.0]}}, "add --random N"),
        ({"search": "random", "ranges": {"lr": [0.1, 1.0]}}, "number of variants"),
        ({"search": "random", "samples": 2}, "something to draw"),
        ({"search": "random", "samples": 2, "ranges": {"lr": [1.0, 0.1]}}, "low < high"),
        ({"search": "random", "samples": 2, "ranges": {"lr": [0, 1, "log"]}}, "low > 0"),
        ({"search": "random", "samples": 2, "ranges": {"lr": [0.1, float("inf")]}}, "finite"),
        ({"search": "grid", "prune": True}, "TPE"),
        ({"search": "bayes"}, "grid, random or tpe"),
        ({"search": "tpe", "samples": 2, "ranges": {"lr": [0.1, 1.0]}, "sample_seed": -1}, "from 0 to 4294967295"),
        ({"search": "random", "samples": 2, "ranges": {"lr": [0.1, 1.0]}, "sample_seed": 2**32}, "whole number"),
        ({"search": "random", "samples": 2, "ranges": {"lr": [0.1, 1.0]}, "sample_seed": 1.5}, "whole number"),
    ],
)
def test_a_search_that_cannot_run_is_refused_with_one_line(fields, message):
    with pytest.raises(UsageError, match=message):
        check_search(SweepSpec(**fields))


def test_a_rerun_tpe_search_asks_each_variant_as_an_uninterrupted_one_would(tmp_path):
    """A study keeps no sampler state: a sampler seeded once per process drew tpe000's values again as
    tpe001 after a rerun. Each variant's draw now depends on the sample seed and its number only."""
    pytest.importorskip("optuna")
    from cnnlab.sweep_search import ask_variant, open_study

    spec = SweepSpec(search="tpe", samples=3, ranges={"lr": [0.001, 1.0, "log"], "epochs": [1, 50]})

    for folder in ("straight", "rerun", "other"):
        (tmp_path / folder).mkdir()

    def ask_and_tell(study, value):
        trial = ask_variant(study, spec)
        study.tell(trial, value)
        return trial.user_attrs["fields"]

    one_process = open_study(spec, tmp_path / "straight")
    straight = [ask_and_tell(one_process, value) for value in (50.0, 60.0, 70.0)]
    rerun = [ask_and_tell(open_study(spec, tmp_path / "rerun"), value) for value in (50.0, 60.0, 70.0)]
    assert rerun == straight and len({tuple(f.values()) for f in straight}) == 3
    other_seed = SweepSpec(**{**spec.__dict__, "sample_seed": 1})
    assert ask_variant(open_study(other_seed, tmp_path / "other"), other_seed).user_attrs["fields"] != straight[0]


def test_a_rerun_trains_a_failed_tpe_variant_again_and_a_lost_study_is_one_line(archive, tmp_path):
    """A variant whose trial crashed is FAIL in the study, which counted it as finished: the rerun said
    "rerun the sweep to finish them" but never trained it again. A trial asked but never named is skipped."""
    optuna = pytest.importorskip("optuna")
    from cnnlab.errors import CnnlabError
    from cnnlab.sweep import claim_sweep_folder
    from cnnlab.sweep_results import read_sweep
    from cnnlab.sweep_search import ask_variant, open_study, run_search

    overrides = {"epochs": 1, "batch_size": 64, "precision": "fp32"}
    spec = SweepSpec(data=str(archive), search="tpe", samples=1, ranges={"lr": [0.01, 0.2, "log"]}, overrides=overrides)
    claim_sweep_folder(tmp_path, spec)
    study = open_study(spec, tmp_path)
    study.tell(ask_variant(study, spec), state=optuna.trial.TrialState.FAIL)  # as the search records a crash
    study.ask()  # a sweep killed between asking a variant and naming it: no variant, and no KeyError either
    lines = []
    results = run_search(spec, tmp_path, 1, lines.append)
    assert any("training them again" in line for line in lines)
    assert [(t["trial"], t["status"]) for t in results["trials"]] == [("tpe000_seed0", "done")]
    (tmp_path / "study.db").unlink()
    for opened in (lambda: read_sweep(tmp_path), lambda: run_search(spec, tmp_path, 1, print)):
        with pytest.raises(CnnlabError, match="study.db is missing: .* restore it from a copy"):
            opened()  # a report, or a rerun that would have named other values tpe000 than its run trained
    assert not (tmp_path / "study.db").exists()


def test_a_random_search_over_fewer_distinct_variants_than_asked_says_so(archive, tmp_path):
    from cnnlab.sweep import run_sweep

    ranges = {"lr": [0.1, 0.1004]}  # every draw keeps 3 significant digits: 0.1
    spec = SweepSpec(data=str(archive), search="random", samples=5, ranges=ranges, overrides={"epochs": 1})
    lines = []
    results = run_sweep(spec, tmp_path / "few", log=lines.append)
    assert [v["variant"] for v in results["variants"]] == ["lr=0.1"]  # before, the 5 asked silently became 1
    assert any("only 1 distinct variant(s)" in line and "1 of the 5 asked" in line for line in lines)


def test_bad_search_flags_exit_2_with_one_line(archive, tmp_path):
    for extra, message in (
        (("--range", "lr=0.1:1"), "add --random N"),
        (("--random", "2", "--search", "tpe"), "choose one"),
        (("--trials", "3"), "add --search tpe"),
        (("--random", "2", "--range", "lr=x:1"), "finite low < high"),
        (("--cpus-per-trial", "2"), "add --ray"),
    ):
        result = run_cli(*_sweep_args(archive, tmp_path / "never", *extra))
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "never").exists()


def test_a_random_search_records_its_fields_and_its_report_renders(archive, tmp_path):
    out = tmp_path / "random"
    result = run_cli(*_sweep_args(archive, out, "--random", "2", "--range", "lr=0.01:0.2:log", "--val-split", "50"))
    assert result.returncode == 0, result.stderr
    variants = list(csv.DictReader((out / "variants.csv").open()))
    assert len(variants) == 2 and all(0.01 <= float(v["lr"]) <= 0.2 for v in variants)
    assert "score: final val acc" in result.stdout and "best of the random search" in result.stdout
    report = run_cli("report", str(out))
    assert report.returncode == 0, report.stderr
    assert "score: final val acc" in report.stdout and report.stdout.strip().endswith("report.html")
    html = (out / "report.html").read_text()
    for needle in ("The question", "Variants", "Trials", "lr: 0.01 to 0.2 (log)", "2 of 2"):
        assert needle in html
    problems, broken, images, title = open_in_browser(out / "report.html", tmp_path / "shot.png")
    assert problems == [] and broken == 0 and images == 1 and title == "cnnlab sweep: random"
    mixed = run_cli("report", str(out), str(out / "runs" / f"{variants[0]['variant']}_seed0"))
    assert mixed.returncode == 2 and "report it on its own" in mixed.stderr


def test_a_tpe_search_keeps_its_study_beside_the_sweep_and_resumes_after_sigkill(archive, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "tpe"
    args = _sweep_args(
        archive, out, "--search", "tpe", "--trials", "2", "--range", "lr=0.01:0.2:log", epochs=5, batch_size=8
    )
    sweep = subprocess.Popen([sys.executable, "-m", "cnnlab", *args], stdout=subprocess.DEVNULL)
    metrics = out / "runs" / "tpe000_seed0" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(sweep.pid, signal.SIGKILL)  # the study keeps tpe000 RUNNING; its trial checkpoints and stops
    sweep.wait()
    time.sleep(3)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert (out / "study.db").is_file() and "no validation split" in again.stdout
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["trial"] for r in rows] == ["tpe000_seed0", "tpe001_seed0"] and {r["status"] for r in rows} == {"done"}
    variants = list(csv.DictReader((out / "variants.csv").open()))
    assert variants[0]["lr"] != variants[1]["lr"]  # the rerun did not ask tpe000's value again
    assert json.loads((out / "runs" / "tpe000_seed0" / "config.json").read_text()).get("resumed")
    optuna = pytest.importorskip("optuna")
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{out / 'study.db'}")
    values = [t.value for t in study.trials]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert values == [float(r["test_acc"]) for r in rows]  # the study's value is the trial's score
    done = run_cli(*args)
    assert done.returncode == 0 and len(optuna.load_study(study_name=None, storage=study._storage).trials) == 2


def test_a_pruned_trial_is_stopped_with_a_checkpoint_and_can_be_resumed(archive, tmp_path):
    from cnnlab.sweep import claim_sweep_folder
    from cnnlab.sweep_trials import run_trial, trial_state

    spec = SweepSpec(data=str(archive), overrides={"epochs": 10, "batch_size": 8, "precision": "fp32"})
    claim_sweep_folder(tmp_path, spec)
    rows = []
    result = run_trial(spec, tmp_path, "base_seed0", 1, on_row=lambda row: rows.append(row) or True)
    assert result["stopped"] and "summary" not in result and rows[0]["epoch"] == 1
    assert trial_state(tmp_path / "runs" / "base_seed0") == "partial"
    finished = run_trial(spec, tmp_path, "base_seed0", 1)
    assert finished["summary"]["epochs"] == 10
