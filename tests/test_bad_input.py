"""Every bad input a user can give: one clear line on stderr, exit 2 (usage) or 1 (the rest), no traceback,
and nothing created or damaged. Plus property-based tests of the readers and the recipe parser."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.data import load_dataset
from cnnlab.errors import CnnlabError
from cnnlab.recipe import load_recipe
from conftest import run_cli, write_cifar_archive


def png_bytes(size=8, colour=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class Evil:  # a pickled payload: unpickling it would call os.system
    def __reduce__(self):
        import os

        return os.system, ("echo pwned",)


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _checkpoint(root: Path, mutate) -> Path:
    """A real cnnlab checkpoint (from a 1-epoch run), changed by `mutate`."""
    from cnnlab.data import Dataset
    from cnnlab.recipe import load_recipe as recipe
    from cnnlab.runs import load_checkpoint
    from cnnlab.train import train
    from conftest import class_images

    x, y = class_images(4)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    data = Dataset("synthetic", [f"c{i}" for i in range(10)], t, torch.from_numpy(y), t, torch.from_numpy(y), "s")
    run = train(recipe("seed", {"epochs": 1, "batch_size": 8}), data, runs_dir=root, name="ck", progress=False, plots=False).run_dir
    payload = mutate(load_checkpoint(run / "last.pt"))
    torch.save(payload, root / "changed.pt")
    return root / "changed.pt"


def setup_cases():
    """name -> (setup(tmp) -> argv, expected exit code, words the one line must contain)."""
    recipe = lambda text: lambda tmp: (tmp / "r.toml").write_text(text) and ["train", "--recipe", str(tmp / "r.toml")]
    tree = lambda files: lambda tmp: ["data", "info", "--data", str(_tree(tmp / "tree", files))]
    good_tree = {"train/cat/a.png": png_bytes(), "train/dog/b.png": png_bytes(), "test/cat/c.png": png_bytes(),
                 "test/dog/d.png": png_bytes()}

    def archive_with(member: str):
        def setup(tmp):
            path = tmp / "evil.zip"
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr(member, png_bytes())
                zf.writestr("train/cat/ok.png", png_bytes())
            return ["data", "info", "--data", str(path)]
        return setup

    def truncated_cifar(tmp):
        full = write_cifar_archive(tmp / "full.tar.gz")
        (tmp / "cut.tar.gz").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        full.unlink()
        return ["data", "info", "--data", str(tmp / "cut.tar.gz")]

    def predict_on(data: bytes, name: str):
        def setup(tmp):
            checkpoint = _checkpoint(tmp, lambda p: p)
            (tmp / name).write_bytes(data)
            return ["predict", str(checkpoint), str(tmp / name)]
        return setup

    def evaluate_checkpoint(make):
        def setup(tmp):
            make(tmp / "model.pt", tmp)
            return ["evaluate", str(tmp / "model.pt"), "--data", "nowhere"]
        return setup

    def other_classes(tmp):
        checkpoint = _checkpoint(tmp, lambda p: {**p, "num_classes": 4, "classes": ["a", "b", "c", "d"]})
        (tmp / "p.png").write_bytes(png_bytes(32))
        return ["predict", str(checkpoint), str(tmp / "p.png")]

    def other_architecture(tmp):
        checkpoint = _checkpoint(tmp, lambda p: {**p, "model": "smallcnn-nobn"})
        (tmp / "p.png").write_bytes(png_bytes(32))
        return ["predict", str(checkpoint), str(tmp / "p.png")]

    return {
        # data sources
        "missing data path": (lambda tmp: ["train", "--data", str(tmp / "nope.tar.gz")], 2, ["no such file"]),
        "unknown dataset name": (lambda tmp: ["train", "--data", "cifar11"], 2, ["unknown dataset", "cifar10"]),
        "random bytes as .tar.gz": (lambda tmp: (tmp / "x.tar.gz").write_bytes(b"\x1f\x8bnot really") and
                                    ["data", "info", "--data", str(tmp / "x.tar.gz")], 1, ["x.tar.gz"]),
        "truncated CIFAR archive": (truncated_cifar, 1, ["cut.tar.gz"]),
        "non-image in a class folder": (tree({**good_tree, "train/cat/notes.txt": b"hi"}), 1, ["notes.txt"]),
        "0-byte image in a tree": (tree({**good_tree, "train/dog/empty.png": b""}), 1, ["empty.png"]),
        "train and test classes differ": (tree({**good_tree, "test/bird/e.png": png_bytes()}), 1, ["bird"]),
        "empty folder": (lambda tmp: (tmp / "empty").mkdir() or ["data", "info", "--data", str(tmp / "empty")], 1, ["empty"]),
        "zip member escaping its folder": (archive_with("../escape.png"), 1, ["escape.png"]),
        "zip member with an absolute path": (archive_with("/etc/evil.png"), 1, ["evil.png"]),
        # command-line values
        "zero epochs": (lambda tmp: ["train", "--epochs", "0"], 2, ["epochs"]),
        "negative learning rate": (lambda tmp: ["train", "--lr", "-1"], 2, ["learning rate"]),
        "batch size not a number": (lambda tmp: ["train", "--batch-size", "abc"], 2, ["--batch-size"]),
        "unknown model": (lambda tmp: ["train", "--model", "resnet99"], 2, ["unknown model", "smallcnn"]),
        "validation split over the data": (lambda tmp: ["train", "--data", str(write_cifar_archive(tmp / "c.tar.gz")),
                                                        "--val-split", "5000"], 2, ["--val-split"]),
        "unknown device": (lambda tmp: ["train", "--device", "tpu"], 2, ["unknown device"]),
        "unknown precision": (lambda tmp: ["train", "--precision", "fp8"], 2, ["unknown precision"]),
        "early stop without validation": (lambda tmp: ["train", "--early-stop", "3"], 2, ["--val-split"]),
        "unknown schedule": (lambda tmp: ["train", "--schedule", "exponential"], 2, ["unknown schedule"]),
        "early crop without its epochs": (lambda tmp: ["train", "--early-crop", "24"], 2, ["--early-crop-epochs"]),
        "early crop as large as the image": (lambda tmp: ["train", "--early-crop", "32", "--early-crop-epochs", "4"], 2,
                                             ["smaller than the image size 32"]),
        "unknown TTA precision": (lambda tmp: ["train", "--tta-precision", "bf16"], 2, ["unknown TTA precision", "auto"]),
        "unknown command": (lambda tmp: ["fly"], 2, ["invalid choice"]),
        "resume with overrides": (lambda tmp: ["train", "--resume", str(tmp), "--epochs", "3"], 2, ["drop --epochs"]),
        # recipe files
        "recipe file missing": (lambda tmp: ["train", "--recipe", str(tmp / "none.toml")], 2, ["unknown recipe"]),
        "recipe not TOML": (recipe("epochs = = 3"), 2, ["not valid TOML"]),
        "recipe unknown field": (recipe("epochz = 3"), 2, ["unknown field 'epochz'"]),
        "recipe wrong type": (recipe('epochs = "ten"'), 2, ["'epochs' should be int"]),
        # image files
        "predict on a text file": (predict_on(b"hello", "fake.jpg"), 1, ["fake.jpg", "not an image"]),
        "predict on a 0-byte file": (predict_on(b"", "zero.png"), 1, ["zero.png", "0 bytes"]),
        "predict on a truncated PNG": (predict_on(png_bytes(64)[:60], "cut.png"), 1, ["cut.png"]),
        # checkpoints
        "checkpoint that is text": (evaluate_checkpoint(lambda p, tmp: p.write_text("weights")), 1, ["model.pt", "not a readable"]),
        "checkpoint with a pickled payload": (evaluate_checkpoint(lambda p, tmp: torch.save({"x": Evil()}, p)), 1,
                                              ["pickled Python objects"]),
        "plain state dict, not cnnlab's": (evaluate_checkpoint(lambda p, tmp: torch.save({"w": torch.zeros(2)}, p)), 1,
                                           ["not a cnnlab checkpoint"]),
        "checkpoint of another class count": (other_classes, 1, ["4 classes"]),
        "checkpoint of another architecture": (other_architecture, 1, ["smallcnn-nobn"]),
        "run folder without checkpoints": (lambda tmp: ["evaluate", str(tmp)], 1, ["no best.pt or last.pt"]),
        "resume a run with no checkpoint": (lambda tmp: (tmp / "r").mkdir() or ["train", "--resume", str(tmp / "r")], 1,
                                            ["no checkpoint yet"]),
        "diagnose a folder that is not a run": (lambda tmp: ["diagnose", str(tmp)], 1, ["no metrics.jsonl"]),
    }


CASES = setup_cases()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path):
    setup, code, words = CASES[name]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    argv = setup(inputs)
    before = snapshot(inputs)
    result = run_cli(*argv, cwd=work)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert snapshot(inputs) == before, "an input was changed"
    assert snapshot(work) == {}, "a file was created"
    assert "pwned" not in result.stdout


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25


# Property-based: whatever the bytes or the tree, a reader loads or raises our own error.

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(data=st.binary(max_size=3000), suffix=st.sampled_from([".tar.gz", ".tar", ".zip", ".tgz"]))
def test_random_bytes_as_an_archive(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"data{suffix}"
    path.write_bytes(data)
    try:
        load_dataset(str(path), cache_dir=path.parent / "cache", progress=False)
    except CnnlabError:
        pass


names = st.sampled_from(["train/a/1.png", "train/b/2.png", "test/a/3.png", "test/b/4.png", "train/a/x.jpg",
                         "test/c/5.png", "train/.hidden", "README", "train/b/sub/6.png", "test/a/7.webp"])
contents = st.one_of(st.binary(max_size=200), st.just(png_bytes()), st.just(png_bytes(40, (0, 0, 255))))


@FAST
@given(files=st.dictionaries(names, contents, max_size=8), as_zip=st.booleans())
def test_random_small_trees(tmp_path_factory, files, as_zip):
    root = tmp_path_factory.mktemp("tree")
    if as_zip:
        source = root / "tree.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        source = _tree(root / "tree", files) if files else root
    try:
        data = load_dataset(str(source), cache_dir=root / "cache", progress=False)
    except CnnlabError:
        return
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape[1:] == (3, 32, 32)
    assert len(data.classes) >= 1 and len(data.train_labels) == len(data.train_images)


toml_values = st.one_of(st.integers(-5, 500), st.floats(allow_nan=True), st.booleans(), st.text(max_size=8),
                        st.lists(st.integers(), max_size=2))
fields = st.sampled_from(["epochs", "lr", "batch_size", "model", "schedule", "flip", "crop_padding", "weight_decay",
                          "momentum", "val_split", "precision", "bogus", "early_stop", "label_smoothing"])


@FAST
@given(entries=st.dictionaries(fields, toml_values, max_size=5), junk=st.text(max_size=20))
def test_random_recipe_files(tmp_path_factory, entries, junk):
    import json

    lines = [f"{k} = {json.dumps(v) if not isinstance(v, float) or v == v else 'nan'}" for k, v in entries.items()]
    text = "\n".join(lines) + ("\n" + junk if junk.strip() else "")
    path = tmp_path_factory.mktemp("recipe") / "r.toml"
    path.write_text(text)
    try:
        recipe = load_recipe(str(path))
    except CnnlabError:
        return
    assert recipe.epochs >= 1 and recipe.lr > 0 and recipe.batch_size >= 1
