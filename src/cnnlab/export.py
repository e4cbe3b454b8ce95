"""Export a trained model for use without cnnlab: ONNX or TorchScript, normalisation included, any batch size.

Input: images [N, 3, H, W], RGB. TorchScript takes uint8 (0-255) or float (0-1) in the same file.
An ONNX input has one type, so the file is made for uint8 (default) or float32 (`input_type`).
Outputs: logits (raw) and probabilities [N, classes], the latter softmax(logits / T) with the run's
fitted temperature T (1 without a validation split; metadata 'temperature'). The class names travel
inside the file (ONNX metadata 'classes'; TorchScript extra file 'cnnlab.json').
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import CnnlabError, UsageError
from .runs import atomic_write_bytes

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_TYPES = ("uint8", "float32")


class WithNormalization(nn.Module):
    """The model behind the same scaling and normalisation as training (loader.Normalizer)."""

    def __init__(self, model: nn.Module, mean, std, temperature: float = 1.0):
        super().__init__()
        self.model, self.temperature = model, float(temperature)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        logits = self.model((x - self.mean) / self.std)
        return logits, (logits / self.temperature).softmax(dim=1)  # logits raw; probabilities calibrated


def metadata(run, input_type: str | None) -> dict:
    checkpoint = run.checkpoint
    return {
        "classes": checkpoint["classes"],
        "image_size": checkpoint["image_size"],
        "model": checkpoint["model"],
        "input": input_type or "uint8 (0-255) or float (0-1)",
        "layout": "NCHW, RGB",
        "mean": checkpoint["mean"],
        "std": checkpoint["std"],
        "weights": run.weights.describe(),
        "temperature": run.temperature,  # probabilities = softmax(logits / temperature)
    }


def export_model(run, fmt: str, out: Path, input_type: str = "uint8") -> Path:
    """Write `run`'s model (openrun.Run) as `fmt` to `out`, atomically."""
    checkpoint, model = run.checkpoint, run.model
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}': choose onnx or torchscript")
    if input_type not in INPUT_TYPES:
        raise UsageError(f"unknown input type '{input_type}': choose uint8 or float32")
    wrapped = WithNormalization(model.eval().cpu(), checkpoint["mean"], checkpoint["std"], run.temperature).eval()
    size = checkpoint["image_size"]
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    if input_type == "float32":
        example = example.float() / 255
    out = Path(out)
    if out.is_dir():
        raise UsageError(
            f"out {out} is a folder; give a file name such as {out / ('model' + FORMATS[fmt])}", parameters=("out",)
        )
    if not out.parent.is_dir():
        raise CnnlabError(f"cannot write {out}: the folder {out.parent} does not exist")
    data = (
        _onnx_bytes(wrapped, example, run, input_type) if fmt == "onnx" else _torchscript_bytes(wrapped, example, run)
    )
    atomic_write_bytes(out, data)
    return out


def _onnx_bytes(wrapped: nn.Module, example: torch.Tensor, run, input_type: str) -> bytes:
    try:
        import onnx
    except ImportError:
        raise UsageError("ONNX export needs the onnx package: pip install 'cnnlab[export]'") from None
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
        torch.onnx.export(
            wrapped,
            (example,),
            buffer,
            input_names=["images"],
            output_names=["logits", "probabilities"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata(run, input_type).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _torchscript_bytes(wrapped: nn.Module, example: torch.Tensor, run) -> bytes:
    import io

    # The network is traced (its control flow is fixed); the wrapper is scripted, so its dtype branch survives.
    traced = torch.jit.trace(wrapped.model, (example.float(),))
    wrapped.model = traced
    scripted = torch.jit.script(wrapped)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={"cnnlab.json": json.dumps(metadata(run, None))})
    return buffer.getvalue()


def check_export(run, out: Path, input_type: str) -> float | None:
    """Max |logit difference| between the exported ONNX file under ONNX Runtime and PyTorch, on 8 random
    images (None without onnxruntime)."""
    size = run.image_size
    images = torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = WithNormalization(run.model.cpu(), run.checkpoint["mean"], run.checkpoint["std"]).eval()(images)[0]
    return check_onnx(out, images if input_type == "uint8" else images.float() / 255, reference)


def check_onnx(path: Path, images: torch.Tensor, reference: torch.Tensor) -> float | None:
    """Max |logit difference| between ONNX Runtime and `reference` on `images`; None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": images.numpy()})[0]
    return float((torch.from_numpy(logits) - reference).abs().max())
