"""Exported models, run for real: ONNX in ONNX Runtime, TorchScript in a fresh process, on real CIFAR-10 test images."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import real_test_files, run_cli

from cnnlab.export import WithNormalization
from cnnlab.images import decode_image
from cnnlab.openrun import load_run
from cnnlab.runfiles import load_checkpoint, model_from_checkpoint

TOLERANCE = 1e-4  # float32 logits of the same network; measured differences are about 1e-6


@pytest.fixture(scope="module")
def real_images(tmp_path_factory):
    files = real_test_files(tmp_path_factory.mktemp("jpegs"), per_class=2)
    return torch.from_numpy(np.stack([decode_image(f, str(f), 32) for f, _ in files])).permute(0, 3, 1, 2).contiguous()


def reference(run, images):
    """The exported pair (logits, probabilities at the run's temperature), computed by PyTorch."""
    checkpoint = load_checkpoint(run / "best.pt")
    temperature = load_run(run, "best").temperature
    model = model_from_checkpoint(checkpoint)
    with torch.no_grad():
        return WithNormalization(model, checkpoint["mean"], checkpoint["std"], temperature).eval()(images)


@pytest.mark.parametrize("input_type", ["uint8", "float32"])
def test_onnx_matches_pytorch_in_onnx_runtime(tiny_run, real_images, tmp_path, input_type):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / f"model-{input_type}.onnx"
    result = run_cli("export", str(tiny_run), "--format", "onnx", "--out", str(out), "--input-type", input_type)
    assert result.returncode == 0, result.stderr
    assert "max |logit difference| from PyTorch" in result.stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"])[0] == "airplane" and json.loads(meta["input"]) == input_type
    expected_logits, expected_probabilities = reference(tiny_run, real_images)
    feed = real_images.numpy() if input_type == "uint8" else (real_images.float() / 255).numpy()
    for batch in (1, len(feed)):  # the batch dimension is dynamic
        logits, probabilities = session.run(["logits", "probabilities"], {"images": feed[:batch]})
        difference = float(np.abs(logits - expected_logits[:batch].numpy()).max())
        print(f"onnx {input_type} batch {batch}: max |logit difference| {difference:.2e}")
        assert difference < TOLERANCE
        assert np.abs(probabilities - expected_probabilities[:batch].numpy()).max() < TOLERANCE
        assert (logits.argmax(1) == expected_logits[:batch].argmax(1).numpy()).all()


def test_torchscript_matches_pytorch_in_a_fresh_process(tiny_run, real_images, tmp_path):
    out = tmp_path / "model.pt"
    result = run_cli("export", str(tiny_run), "--format", "torchscript", "--out", str(out))
    assert result.returncode == 0, result.stderr
    np.save(tmp_path / "images.npy", real_images.numpy())
    script = f"""
import json, numpy as np, torch
extra = {{"cnnlab.json": ""}}
model = torch.jit.load({str(out)!r}, _extra_files=extra)
images = torch.from_numpy(np.load({str(tmp_path / "images.npy")!r}))
np.save({str(tmp_path / "from_uint8.npy")!r}, model(images)[0].detach().numpy())
np.save({str(tmp_path / "from_float.npy")!r}, model(images[:3].float() / 255)[0].detach().numpy())
print(json.loads(extra["cnnlab.json"])["classes"][0])
"""
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.strip() == "airplane"
    expected, _ = reference(tiny_run, real_images)
    from_uint8, from_float = np.load(tmp_path / "from_uint8.npy"), np.load(tmp_path / "from_float.npy")
    difference = float(np.abs(from_uint8 - expected.numpy()).max())
    print(f"torchscript: max |logit difference| {difference:.2e}")
    assert difference < TOLERANCE
    assert np.abs(from_float - expected[:3].numpy()).max() < TOLERANCE


def test_export_refuses_a_folder_as_output(tiny_run, tmp_path):
    result = run_cli("export", str(tiny_run), "--format", "torchscript", "--out", str(tmp_path))
    assert result.returncode == 2 and "is a folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    bad = run_cli("export", str(tiny_run), "--format", "keras")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
