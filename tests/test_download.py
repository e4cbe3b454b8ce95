"""Downloading and unpacking the CIFAR archives, over real HTTP from a server on 127.0.0.1."""

from __future__ import annotations

import io
import tarfile

from conftest import files_under, md5, run_cli, write_cifar_archive

from cnnlab.data import load_dataset
from cnnlab.download import CIFAR_ARCHIVES

NAME = CIFAR_ARCHIVES["cifar10"].filename


def test_download_over_http_then_load(http_server, tmp_path):
    archive = write_cifar_archive(tmp_path / NAME)
    http_server.serve(f"/mirror/{NAME}", archive.read_bytes())
    root = tmp_path / "data"
    result = run_cli(
        "data", "download", "--data-root", str(root), "--mirror", f"{http_server.url}/mirror", "--md5", md5(archive)
    )
    assert result.returncode == 0, result.stderr
    assert (root / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert (root / NAME).is_file()
    assert not [p for p in files_under(root) if ".part" in p or ".extract" in p]
    # Loading now uses the extracted folder, as with a torchvision download.
    ds = load_dataset("cifar10", root=root)
    assert ds.train_images.shape == (200, 3, 32, 32) and ds.test_images.shape == (50, 3, 32, 32)
    assert ds.classes[0] == "airplane" and ds.known_stats is not None


def test_mirror_from_environment_variable(http_server, tmp_path):
    archive = write_cifar_archive(tmp_path / NAME)
    http_server.serve(f"/{NAME}", archive.read_bytes())
    result = run_cli(
        "data",
        "download",
        "--data-root",
        str(tmp_path / "d"),
        "--md5",
        md5(archive),
        env={"CNNLAB_CIFAR_MIRROR": http_server.url},
    )
    assert result.returncode == 0, result.stderr


def _assert_clean_failure(result, root, *words):
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert files_under(root) == set(), files_under(root)  # nothing half-written, not even the archive


def test_md5_mismatch_leaves_nothing(http_server, tmp_path):
    archive = write_cifar_archive(tmp_path / NAME)
    http_server.serve(f"/{NAME}", archive.read_bytes())
    root = tmp_path / "data"
    result = run_cli("data", "download", "--data-root", str(root), "--mirror", http_server.url)  # canonical md5
    _assert_clean_failure(result, root, "md5", CIFAR_ARCHIVES["cifar10"].md5)


def test_truncated_transfer_leaves_nothing(http_server, tmp_path):
    archive = write_cifar_archive(tmp_path / NAME)
    http_server.serve(f"/{NAME}", archive.read_bytes(), truncate=True)
    root = tmp_path / "data"
    result = run_cli("data", "download", "--data-root", str(root), "--mirror", http_server.url, "--md5", md5(archive))
    _assert_clean_failure(result, root, "stopped after")


def test_corrupt_archive_leaves_nothing_extracted(http_server, tmp_path):
    body = b"\x1f\x8b\x08\x00" + b"this is not really gzip" * 50
    http_server.serve(f"/{NAME}", body)
    root = tmp_path / "data"
    (tmp_path / "x").write_bytes(body)
    result = run_cli(
        "data", "download", "--data-root", str(root), "--mirror", http_server.url, "--md5", md5(tmp_path / "x")
    )
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not a readable archive" in result.stderr
    # The verified download stays (it is what was served); nothing was extracted.
    assert files_under(root) == {NAME}


def test_member_escaping_the_folder_is_refused(http_server, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        for name in ("cifar-10-batches-py/data_batch_1", "../outside.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
    http_server.serve(f"/{NAME}", evil.read_bytes())
    root = tmp_path / "deep" / "data"
    result = run_cli("data", "download", "--data-root", str(root), "--mirror", http_server.url, "--md5", md5(evil))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "../outside.txt" in result.stderr and "outside" in result.stderr
    assert not (tmp_path / "deep" / "outside.txt").exists()
    assert files_under(root) == {NAME}


def test_no_network_gives_one_clear_line(tmp_path):
    root = tmp_path / "data"
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    result = run_cli(
        "train",
        "--data-root",
        str(root),
        "--mirror",
        "http://127.0.0.1:9",
        "--epochs",
        "1",
        "--runs-dir",
        str(tmp_path / "runs"),
    )
    _assert_clean_failure(result, root, "could not download", "--mirror")
    assert not (tmp_path / "runs").exists() or files_under(tmp_path / "runs") == set()


def test_archive_path_loads_without_unpacking(tmp_path):
    archive = write_cifar_archive(tmp_path / NAME)
    ds = load_dataset(str(archive))
    assert ds.train_images.shape == (200, 3, 32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def test_download_command_rejects_other_sources(tmp_path):
    result = run_cli("data", "download", "--data", str(tmp_path))
    assert result.returncode == 2 and "fetches" in result.stderr
