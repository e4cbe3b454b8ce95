"""The CLI end to end, in a real subprocess."""

from __future__ import annotations

import csv
import json

from conftest import files_under, run_cli, write_cifar_archive, write_image_folder

RUN_FILES = {
    ".lock",
    "config.json",
    "metrics.jsonl",
    "metrics.csv",
    "last.pt",
    "best.pt",
    "summary.json",
    "curves.png",
    "confusion.png",
    "errors.png",
    "per_class.png",
    "reliability.png",
    "confusion.json",
    "classification.json",
}


def test_train_then_evaluate(tmp_path):
    data = write_image_folder(tmp_path / "tree", n_train_per_class=16, n_test_per_class=6)
    runs = tmp_path / "runs"
    result = run_cli(
        "train",
        "--data",
        str(data),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--val-split",
        "8",
        "--runs-dir",
        str(runs),
        "--name",
        "tiny",
    )
    assert result.returncode == 0, result.stderr
    lines = [l for l in result.stdout.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and "loss" in lines[0] and "test acc" in lines[0] and "img/s" in lines[0]
    run = runs / "tiny"
    assert files_under(run) == RUN_FILES
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    with open(run / "metrics.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert list(csv_rows[0]) == [
        "epoch",
        "lr",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "val_balanced_acc",
        "val_macro_f1",
        "val_ece",
        "val_ece_calibrated",
        "temperature",
        "test_loss",
        "test_acc",
        "seconds",
        "eval_seconds",
        "images_per_s",
        "ema_val_acc",
        "ema_test_acc",
        "tta_test_acc",
        "tta_test_loss",
    ]
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"]["epochs"] == 2 and config["data"]["checksum"] and config["versions"]["torch"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_metric"] == "val_acc" and 1 <= summary["best_epoch"] <= 2

    evaluated = run_cli("evaluate", str(run / "last.pt"), "--data", str(data), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert abs(report["test_acc"] - rows[-1]["test_acc"]) < 1e-9
    assert set(report["per_class_acc"]) == {"airplane", "automobile", "bird", "cat"}
    # A run folder means its best.pt, and its own data by default.
    table = run_cli("evaluate", str(run))
    assert table.returncode == 0 and "test accuracy" in table.stdout and "airplane" in table.stdout

    again = run_cli("train", "--data", str(data), "--epochs", "1", "--runs-dir", str(runs), "--name", "tiny")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert files_under(run) == RUN_FILES
    assert json.loads((run / "summary.json").read_text()) == summary


def test_usage_errors_are_one_line_with_exit_code_2(tmp_path):
    cases = [
        ("train", "--epochs", "abc"),
        ("train", "--epochs", "0", "--data", str(tmp_path)),
        ("train", "--model", "vgg99", "--data", str(tmp_path)),
        ("train", "--data", "imagenet"),
        ("train", "--recipe", "nope"),
        ("train", "--lr", "-1"),
        ("train", "--precision", "fp8"),
        ("frobnicate",),
    ]
    for args in cases:
        result = run_cli(*args, "--runs-dir", str(tmp_path / "runs")) if args[0] == "train" else run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_module_and_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("cnnlab ")


def test_recipes_and_models_are_listed():
    from cnnlab.device import cpu_kind
    from cnnlab.recipe_files import shipped_recipes

    listed = run_cli("recipes").stdout.splitlines()
    assert [l.split()[0] for l in listed if not l.startswith(" ")] == sorted(shipped_recipes())
    notes = [l.strip() for l in listed if l.startswith(" ")]
    assert all(note.startswith("note: ") for note in notes)  # under its recipe: what this kind of CPU gets
    said_here = any(note.startswith("note: speedrun-cpu90 ") for note in notes)
    assert said_here == (cpu_kind() in ("avx2", "other"))  # a slow kind's measured note, or 'not measured'
    assert "smallcnn" in run_cli("models").stdout


def test_data_info_and_stats(tmp_path):
    data = write_image_folder(tmp_path / "tree")
    info = run_cli("data", "info", "--data", str(data))
    assert info.returncode == 0 and "train       48 images" in info.stdout
    stats = run_cli("data", "stats", "--data", str(data))
    assert stats.returncode == 0 and stats.stdout.count("(") == 2


def test_emulated_bf16_is_one_warning_line_and_the_run_records_its_cpu(tmp_path):
    import torch

    from cnnlab.device import cpu_has_native_bf16

    data = write_image_folder(tmp_path / "tree", n_train_per_class=8, n_test_per_class=2)
    result = run_cli(
        "train",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--precision",
        "bf16",
        "--no-plots",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--name",
        "bf16",
    )
    assert result.returncode == 0, result.stderr
    warned = [l for l in result.stderr.splitlines() if "warning" in l]
    if cpu_has_native_bf16():  # the fast path: nothing to warn about
        assert warned == []
    else:  # emulated: said once, in one line, with what to do instead; the run still happens
        assert len(warned) == 1 and warned[0].startswith("cnnlab train: warning: --precision bf16")
        assert "emulated" in warned[0] and "--precision auto" in warned[0] and "Traceback" not in result.stderr
    cpu = json.loads((tmp_path / "runs" / "bf16" / "config.json").read_text())["machine"]["cpu"]
    assert cpu["isa"] == torch.backends.cpu.get_cpu_capability() and cpu["native_bf16"] == cpu_has_native_bf16()


def test_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()  # the reader is gone before a byte is written, like `cnnlab models | head -0`
    assert process.wait(timeout=60) == 0
    assert process.stderr.read() == b""


def test_names_of_any_bytes_print_under_a_strict_utf8_locale(tiny_run, tmp_path):
    import os

    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    for name in (b"caf\xe9.png", b"two\nlines.png"):
        Image.new("RGB", (32, 32), (90, 90, 90)).save(open(os.fsencode(folder) + b"/" + name, "wb"), "PNG")
    (folder / "notes.txt").write_text("not an image")
    env = {"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict"}
    text = run_cli("predict", str(tiny_run), str(folder), env=env)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()[1:]  # after the line naming the weights
    assert len(lines) == 2 and any("caf\\xe9.png" in l for l in lines) and any("two\\nlines.png" in l for l in lines)
    assert "notes.txt" in text.stderr and "Traceback" not in text.stderr
    records = [
        json.loads(l) for l in run_cli("predict", str(tiny_run), str(folder), "--json", env=env).stdout.splitlines()
    ]
    assert [r.get("skipped", "")[:20] for r in records].count("not an image file (c") == 1  # notes.txt, with its reason
    assert sum("predicted" in r for r in records) == 2


def test_threads_limits_a_run_and_is_recorded(tmp_path):
    data = write_cifar_archive(tmp_path / "c.tar.gz", n_train_per_class=4, n_test_per_class=2)
    args = ["train", "--data", str(data), "--epochs", "1", "--runs-dir", str(tmp_path / "runs"), "--no-plots"]
    done = run_cli(*args, "--name", "one", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "runs" / "one" / "config.json").read_text())["threads"] == 1
    bad = run_cli(*args, "--name", "bad", "--threads", "-1")
    assert bad.returncode == 2 and "--threads" in bad.stderr and not (tmp_path / "runs" / "bad").exists()
