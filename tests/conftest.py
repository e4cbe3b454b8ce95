"""Shared fixtures: small real datasets built on disk, a real HTTP server, the real CLI."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Each worker has a core of its own: one thread for its training, and for the CLI processes it starts
    # (two processes each starting a thread per core run about 10x slower than one).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own decode cache, so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))


def real_data() -> Path:
    if not REAL_DATA.is_file():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA


def class_images(
    n_per_class: int, num_classes: int = 10, size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic images: each class has its own colour and stripe direction, plus noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    yy, xx = np.mgrid[0:size, 0:size]
    for c in range(num_classes):
        colour = np.array([(c * 67) % 256, (c * 131 + 40) % 256, (c * 29 + 90) % 256], dtype=np.float64)
        stripes = np.sin((xx if c % 2 else yy) * (0.4 + 0.1 * c))[..., None] * 60
        for _ in range(n_per_class):
            img = colour + stripes + rng.normal(0, 25, (size, size, 3))
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels)


def write_cifar_archive(
    path: Path,
    n_train_per_class: int = 20,
    n_test_per_class: int = 5,
    folder: str = "cifar-10-batches-py",
    conflicting_test_pair: bool = False,
) -> Path:
    """A python-format CIFAR-10 archive with the canonical layout and pickled batches.

    With `conflicting_test_pair`, the last automobile test image is replaced by a copy of the first
    airplane test image (keeping its automobile label): whatever a model answers for that picture, one
    of the two is a mistake, so every model makes at least one, and airplane or automobile is in it."""
    train_x, train_y = class_images(n_train_per_class, seed=1)
    test_x, test_y = class_images(n_test_per_class, seed=2)
    if conflicting_test_pair:
        test_x[2 * n_test_per_class - 1] = test_x[0]
    order = np.random.default_rng(3).permutation(len(train_y))
    train_x, train_y = train_x[order], train_y[order]
    to_rows = lambda x: x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    members = {"batches.meta": {"label_names": CLASSES, "num_vis": 3072}}
    for i, chunk in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
        members[f"data_batch_{i}"] = {"data": to_rows(train_x[chunk]), "labels": train_y[chunk].tolist()}
    members["test_batch"] = {"data": to_rows(test_x), "labels": test_y.tolist()}
    with tarfile.open(path, "w:gz") as tf:
        for name, obj in members.items():
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_image_folder(
    root: Path,
    n_train_per_class: int = 12,
    n_test_per_class: int = 4,
    classes=CLASSES[:4],
    size: int = 32,
    fmt: str = "png",
) -> Path:
    for split, n, seed in (("train", n_train_per_class, 1), ("test", n_test_per_class, 2)):
        x, y = class_images(n, num_classes=len(classes), size=size, seed=seed)
        for i, (img, label) in enumerate(zip(x, y)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:04d}.{fmt}")
    return root


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    truncate: set[str] = set()

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.truncate:
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1. Use `server.serve(path_in_url, bytes, truncate=False)`."""

    class Handler(_Handler):
        files: dict[str, bytes] = {}
        truncate: set[str] = set()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(url_path: str, body: bytes, truncate: bool = False) -> None:
        Handler.files[url_path] = body
        if truncate:
            Handler.truncate.add(url_path)

    server.serve = serve
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """The real `cnnlab` CLI in a subprocess (as `python -m cnnlab`, so it uses this interpreter)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    """A small python-format CIFAR-10 archive (30 training and 10 test images per class). Its test split
    holds one picture twice, labelled airplane and automobile, so any model trained on it makes a mistake."""
    return write_cifar_archive(
        tmp_path_factory.mktemp("data") / "cifar.tar.gz",
        n_train_per_class=30,
        n_test_per_class=10,
        conflicting_test_pair=True,
    )


@pytest.fixture(scope="session")
def tiny_run(archive, tmp_path_factory):
    """A real 4-epoch run folder on `archive`, with a validation split. Treat it as read-only."""
    from cnnlab.data import load_dataset
    from cnnlab.recipe_files import load_recipe
    from cnnlab.train import train

    data = load_dataset(str(archive), cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    recipe = load_recipe("seed", {"epochs": 4, "batch_size": 32, "val_split": "50", "precision": "fp32"})
    return train(recipe, data, runs_dir=tmp_path_factory.mktemp("runs"), name="tiny", progress=False).run_dir


def real_test_files(folder: Path, per_class: int = 2) -> list[tuple[Path, str]]:
    """Copy the first `per_class` test JPEGs of each class out of the real archive, bytes unchanged."""
    counts: dict[str, int] = {}
    files = []
    with tarfile.open(real_data(), "r:gz") as tf:
        for member in tf:
            parts = member.name.strip("./").split("/")
            if not member.isfile() or len(parts) < 3 or parts[-3] != "test":
                continue
            cls = parts[-2]
            if counts.get(cls, 0) >= per_class:
                continue
            counts[cls] = counts.get(cls, 0) + 1
            target = folder / f"{cls}-{parts[-1]}"
            target.write_bytes(tf.extractfile(member).read())
            files.append((target, cls))
    return files


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    """The decode cache that `real_dataset` fills: a load from it is a real cached load."""
    return tmp_path_factory.mktemp("real-cache")


@pytest.fixture(scope="session")
def real_dataset(real_cache):
    """The real CIFAR-10 JPEG archive, decoded once per test session (60,000 JPEGs: about half a minute)."""
    from cnnlab.data import load_dataset

    return load_dataset(str(real_data()), cache_dir=real_cache, progress=False)
