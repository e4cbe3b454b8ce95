"""Image folders (as folders, tars and zips), the decode cache, statistics and splits."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
import zipfile

import numpy as np
import pytest
import torch
from conftest import CLASSES, real_data, run_cli, write_image_folder
from PIL import Image

from cnnlab.data import load_dataset
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.splits import channel_stats, parse_count, stratified_take


def test_image_folder_loads_sorted_classes(tmp_path):
    write_image_folder(tmp_path / "tree")
    ds = load_dataset(str(tmp_path / "tree"))
    assert ds.classes == sorted(CLASSES[:4])
    assert ds.train_images.shape == (48, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (16, 3, 32, 32)
    assert ds.train_labels.bincount().tolist() == [12, 12, 12, 12]
    assert ds.checksum.startswith("tree-sha256:")


def test_odd_sizes_grayscale_palette_and_rgba_become_rgb_of_the_image_size(tmp_path):
    root = write_image_folder(tmp_path / "tree", n_train_per_class=2, n_test_per_class=1)
    folder = root / "train" / "bird"
    Image.new("L", (50, 17), 128).save(folder / "gray.png")
    Image.new("P", (7, 90)).save(folder / "palette.bmp")
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(folder / "clear.png")  # fully transparent red -> white
    Image.new("RGB", (33, 31), (0, 0, 255)).save(folder / "odd.jpg")
    Image.new("RGB", (40, 40), (0, 255, 0)).save(folder / "green.webp")
    ds = load_dataset(str(root), image_size=24)
    assert ds.train_images.shape == (13, 3, 24, 24)
    by_name = sorted(p.name for p in folder.iterdir())
    images = ds.train_images[ds.train_labels == ds.classes.index("bird")]
    clear = images[by_name.index("clear.png")]
    assert clear.min() == 255  # transparency composited onto white
    gray = images[by_name.index("gray.png")]
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip"])
def test_archives_of_an_image_folder(tmp_path, kind):
    root = write_image_folder(tmp_path / "tree")
    archive = tmp_path / f"tree.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for p in sorted(root.rglob("*.png")):
                zf.write(p, "wrapped/" + str(p.relative_to(root)))  # one wrapping folder is allowed
    else:
        with tarfile.open(archive, "w:gz" if kind == "tar.gz" else "w") as tf:
            tf.add(root / "train", "train")
            tf.add(root / "test", "test")
    from_archive = load_dataset(str(archive))
    from_folder = load_dataset(str(root))
    assert from_archive.classes == from_folder.classes
    assert torch.equal(from_archive.train_images, from_folder.train_images)
    assert torch.equal(from_archive.test_labels, from_folder.test_labels)


def test_a_file_that_is_not_an_image_is_named(tmp_path):
    root = write_image_folder(tmp_path / "tree", n_train_per_class=2, n_test_per_class=1)
    (root / "train" / "cat" / "0099.png").write_bytes(b"certainly not a png")
    with pytest.raises(CnnlabError, match="0099.png"):
        load_dataset(str(root))


def test_a_file_with_another_extension_is_named(tmp_path):
    root = write_image_folder(tmp_path / "tree", n_train_per_class=2, n_test_per_class=1)
    (root / "test" / "cat" / "notes.txt").write_text("hi")
    with pytest.raises(CnnlabError, match="notes.txt"):
        load_dataset(str(root))


def test_different_class_sets_are_an_error(tmp_path):
    root = write_image_folder(tmp_path / "tree", n_train_per_class=2, n_test_per_class=1)
    shutil.rmtree(root / "test" / "cat")
    with pytest.raises(CnnlabError, match="different classes.*only in train: \\['cat'\\]"):
        load_dataset(str(root))


def test_a_train_only_tree_gets_a_seeded_stratified_test_split_and_says_so(tmp_path):
    root = write_image_folder(tmp_path / "tree", n_train_per_class=10, n_test_per_class=1)
    shutil.rmtree(root / "test")
    data = load_dataset(str(root), progress=False)
    assert len(data.test_labels) == 8 and data.test_labels.bincount().tolist() == [2, 2, 2, 2]  # 20% of each class
    assert len(data.train_labels) == 32 and not set(data.test_files) & set(data.train_files)
    assert data.carved_test and "carved from train/: 8 images" in data.summary()["layout"]["test"]
    again = load_dataset(str(root), progress=False, cache_dir=tmp_path / "other-cache")
    assert again.test_files == data.test_files  # the same carve every time
    shutil.rmtree(root / "train")
    with pytest.raises(CnnlabError, match="no images under train/"):
        load_dataset(str(root), progress=False)


@pytest.mark.parametrize("name", ["val", "valid"])
def test_a_val_folder_is_the_validation_split(tmp_path, name):
    from cnnlab.prepare import split_images
    from cnnlab.recipe_files import load_recipe

    root = write_image_folder(tmp_path / "tree", n_train_per_class=6, n_test_per_class=2)
    shutil.copytree(root / "test", root / name)  # 8 validation images
    data = load_dataset(str(root), progress=False)
    assert len(data.train_labels) == 24 + 8 and len(data.given_val) == 8
    train_index, val_index = split_images(load_recipe("seed", {}), data)
    assert val_index.tolist() == data.given_val.tolist() and len(train_index) == 24
    assert all(data.train_files[k].startswith(f"{name}/") for k in val_index)
    assert data.summary()["layout"]["val"] == "the val/ folder (8 images)"
    with pytest.raises(UsageError, match="own val/ folder"):
        split_images(load_recipe("seed", {"val_split": "4"}), data)
    (root / name / "zebra").mkdir()
    Image.new("RGB", (32, 32)).save(root / name / "zebra" / "z.png")
    with pytest.raises(CnnlabError, match="val/ has classes that train/ has not"):
        load_dataset(str(root), progress=False)


def test_a_val_folder_run_chooses_best_pt_on_it_from_the_cli(tmp_path):
    root = write_image_folder(tmp_path / "tree", n_train_per_class=6, n_test_per_class=2)
    shutil.copytree(root / "test", root / "val")
    done = run_cli(
        "train", "--data", str(root), "--epochs", "1", "--runs-dir", str(tmp_path / "runs"), "--name", "r", "--no-plots"
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "runs" / "r" / "config.json").read_text())
    assert config["data"]["val_held_out"] == 8 and config["data"]["layout"]["val"].startswith("the val/ folder")
    info = run_cli("data", "info", "--data", str(root))
    assert "the val/ folder (8 images)" in info.stdout and "imbalance   1.0" in info.stdout, info.stdout


def test_unknown_name_and_missing_path_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(UsageError, match="no such file"):
        load_dataset(str(tmp_path / "missing.tar.gz"))


def test_not_an_archive_is_an_error(tmp_path):
    junk = tmp_path / "data.bin"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CnnlabError, match="neither a folder nor"):
        load_dataset(str(junk))


def test_cache_is_one_file_per_source_reused_and_replaced_by_a_new_version(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "tree")
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    first = load_dataset(str(root))
    (made,) = cache.glob("*.npz")
    written = made.stat().st_mtime_ns
    second = load_dataset(str(root))
    assert torch.equal(first.train_images, second.train_images) and first.checksum == second.checksum
    assert list(cache.glob("*.npz")) == [made] and made.stat().st_mtime_ns == written  # read, not rewritten
    # A new version of the source (here: one more image) replaces the old file instead of adding one.
    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "train" / "bird" / "extra.png")
    third = load_dataset(str(root))
    assert len(third.train_labels) == len(first.train_labels) + 1 and third.checksum != first.checksum
    assert len(list(cache.glob("*.npz"))) == 1 and not made.exists()
    assert not list(cache.glob(".*"))  # no temporary left behind


def test_cache_beside_a_writable_folder_is_not_part_of_the_data(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_CACHE")
    root = write_image_folder(tmp_path / "tree", n_train_per_class=2, n_test_per_class=1)
    checksums = {load_dataset(str(root)).checksum for _ in range(3)}
    assert len(checksums) == 1  # the cache inside the folder never changes the folder's fingerprint
    assert len(list((root / ".cnnlab-cache").glob("*.npz"))) == 1


def test_a_cache_folder_inside_the_data_is_neither_data_nor_fingerprinted(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "tree", n_train_per_class=2, n_test_per_class=1)
    monkeypatch.setenv("CNNLAB_CACHE", str(root / "train" / "cache"))  # not hidden, inside a split
    first, second = load_dataset(str(root)), load_dataset(str(root))
    assert first.checksum == second.checksum and len(first.train_labels) == 8


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_cache_is_rebuilt_with_one_warning_and_never_used(tmp_path, monkeypatch):
    import warnings

    from cnnlab.errors import CnnlabWarning

    root = write_image_folder(tmp_path / "tree", n_train_per_class=3, n_test_per_class=1)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    truth = load_dataset(str(root))
    (made,) = cache.glob("*.npz")
    pixels = made.read_bytes().index(truth.train_images.numpy().tobytes()[:64])
    for damage in (
        lambda: _flip(made, pixels + 100),
        lambda: made.write_bytes(made.read_bytes()[:500]),
        lambda: made.write_bytes(b""),
    ):
        damage()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = load_dataset(str(root))
        assert [str(w.message) for w in caught if issubclass(w.category, CnnlabWarning)][0].startswith(
            "the decode cache"
        )
        assert len(caught) == 1 and torch.equal(again.train_images, truth.train_images)
        assert again.checksum == truth.checksum and len(list(cache.glob("*.npz"))) == 1


def test_channel_stats_match_numpy():
    x = torch.randint(0, 256, (37, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(x, chunk=10)
    ref = x.numpy().astype(np.float64) / 255
    assert np.allclose(mean, ref.mean(axis=(0, 2, 3)), atol=1e-4)
    assert np.allclose(std, ref.std(axis=(0, 2, 3)), atol=1e-4)


def test_parse_count():
    assert parse_count("0.1", 1000, "x") == 100
    assert parse_count("250", 1000, "x") == 250
    assert parse_count(None, 1000, "x") == 0
    for bad in ("abc", "-5", "1000", "2.5", "1.0"):
        with pytest.raises(UsageError):
            parse_count(bad, 1000, "--val-split")


def test_stratified_take_is_disjoint_proportional_and_seeded():
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    taken, rest = stratified_take(labels, 100, seed=3)
    assert len(taken) == 100 and len(rest) == 900
    assert set(taken.tolist()).isdisjoint(rest.tolist())
    assert labels[taken].bincount().tolist() == [60, 30, 10]
    again, _ = stratified_take(labels, 100, seed=3)
    other, _ = stratified_take(labels, 100, seed=4)
    assert torch.equal(taken, again) and not torch.equal(taken, other)


def test_real_data_loads_with_published_statistics(real_dataset, real_cache):
    ds = real_dataset  # decoded from the JPEGs by the fixture, once per test session
    assert ds.train_images.shape == (50000, 3, 32, 32) and ds.test_images.shape == (10000, 3, 32, 32)
    assert ds.train_labels.bincount().tolist() == [5000] * 10
    mean, std = channel_stats(ds.train_images)
    # The data README: mean (0.4913, 0.4821, 0.4465), std (0.2452, 0.2428, 0.2606).
    assert np.allclose(mean, (0.4913, 0.4821, 0.4465), atol=2e-4)
    assert np.allclose(std, (0.2452, 0.2428, 0.2606), atol=2e-4)
    start = time.perf_counter()
    again = load_dataset(str(real_data()), cache_dir=real_cache, progress=False)
    cached_seconds = time.perf_counter() - start
    print(f"cached load of 60,000 images: {cached_seconds:.2f}s")  # reported, not asserted (noisy machine)
    assert torch.equal(again.train_images, ds.train_images) and torch.equal(again.test_labels, ds.test_labels)


def test_high_bit_depth_float_exif_and_animated_images_decode_as_people_see_them(tmp_path):
    import io

    from cnnlab.images import IMAGE_EXTENSIONS, decode_image

    ramp16 = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 to 65,472
    buffer = io.BytesIO()
    Image.fromarray(ramp16).save(buffer, "PNG")
    out = decode_image(buffer.getvalue(), "ramp16.png", 32)
    assert np.abs(out[..., 0].astype(int) - np.rint(ramp16 / 257)).max() == 0  # scaled, not clipped at 255
    floats = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    buffer = io.BytesIO()
    Image.fromarray(floats).save(buffer, "TIFF")
    out = decode_image(buffer.getvalue(), "floats.tif", 32)
    assert out.max() == 255 and abs(int(out[16, 16, 0]) - floats[16, 16] * 255) <= 0.5
    # A landscape picture, red on the left, whose EXIF says "rotate 90 degrees clockwise to show it".
    picture = Image.new("RGB", (64, 32), (0, 0, 255))
    picture.paste((255, 0, 0), (0, 0, 32, 32))
    exif = picture.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", exif=exif, quality=95)
    upright = decode_image(buffer.getvalue(), "phone.jpg", 32)
    assert upright[2, 16, 0] > 200 and upright[29, 16, 2] > 200  # red on top once turned, blue below
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert tuple(decode_image(buffer.getvalue(), "two.gif", 32)[0, 0]) == (255, 0, 0)  # the first frame
    assert {".gif", ".tif", ".tiff", ".png", ".jpg"} <= set(IMAGE_EXTENSIONS)


def test_gif_tiff_and_names_of_any_bytes_are_read_from_folders(tmp_path):
    root = write_image_folder(tmp_path / "tree", n_train_per_class=2, n_test_per_class=1)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "train" / "cat" / "x.gif")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "train" / "cat" / "y.tiff")
    odd = os.fsencode(root / "train" / "cat") + b"/caf\xe9 \xff.png"  # latin-1 bytes: not UTF-8
    Image.new("RGB", (32, 32), (9, 9, 9)).save(open(odd, "wb"), "PNG")
    ds = load_dataset(str(root))
    assert len(ds.train_labels) == 11 and ds.checksum == load_dataset(str(root)).checksum
    assert "train/cat/caf\\xe9 \\xff.png" in ds.train_files  # named in valid Unicode, the bytes escaped


def test_archive_members_are_capped_and_read_in_bounded_memory(tmp_path, monkeypatch):
    import cnnlab.sourcefiles as sourcefiles

    root = write_image_folder(tmp_path / "tree", n_train_per_class=2, n_test_per_class=1)
    archive = tmp_path / "tree.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(root.rglob("*.png")):
            zf.write(p, str(p.relative_to(root)))
    monkeypatch.setattr(sourcefiles, "MAX_MEMBER_BYTES", 100)  # every member is larger than this
    with pytest.raises(CnnlabError, match="over the 0 MiB limit|limit for one member"):
        load_dataset(str(archive), cache_dir=tmp_path / "c1")
    monkeypatch.setattr(sourcefiles, "MAX_MEMBER_BYTES", 1 << 20)
    monkeypatch.setattr(sourcefiles, "MAX_ARCHIVE_BYTES", 1000)  # the archive as a whole is larger
    with pytest.raises(CnnlabError, match="GiB inflated, the limit"):
        load_dataset(str(archive), cache_dir=tmp_path / "c2")


def test_the_first_training_images_keep_their_file_names_in_step(tmp_path):
    root = write_image_folder(tmp_path / "tree", n_train_per_class=6, n_test_per_class=2)
    shutil.copytree(root / "test", root / "val")
    data = load_dataset(str(root), progress=False)
    for n in (5, 30):
        first = data.first_train_images(n)
        assert len(first.train_images) == len(first.train_labels) == len(first.train_files) == n
        assert first.train_files == data.train_files[:n] and torch.equal(first.train_images, data.train_images[:n])
        assert first.given_val is None or first.given_val.tolist() == [k for k in data.given_val.tolist() if k < n]
    assert len(data.train_labels) == 32  # the whole dataset is untouched
