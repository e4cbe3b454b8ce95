"""The record script on this CPU: airbench94 (KellerJordan/cifar10-airbench, legacy/airbench94.py, not part
of cnnlab) run on cnnlab's data, adapted only as far as a CPU needs, for issue 24's comparison with
`cnnlab train --recipe speedrun`.

    python benchmarks/airbench_cpu.py AIRBENCH94_PY DATA --seeds 0,1,2 [--out results.json] [--epochs E]

The script is read from AIRBENCH94_PY and run unchanged except for the replacements in CPU_ADAPTATION,
each of which must match exactly once (so a changed upstream script fails here instead of running
something else). They put the network in float32 with bf16 autocast for the training forward pass (the
CPU path of cnnlab's speedrun recipe), evaluate in float32 (as cnnlab's final results are), keep the
tensors on the CPU, seed each run, and return the plain accuracy beside the TTA one. Its hyperparameters,
9.9 epochs included, are untouched. The data are DATA's images, written in airbench's cache format
(uint8 NHWC) to a temporary folder that is deleted afterwards.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from cnnlab.data import load_dataset
from cnnlab.device import cpu_description, tune_cpu_allocator

CPU_ADAPTATION = [
    ("data = torch.load(data_path, map_location=torch.device(gpu))", "data = torch.load(data_path)"),
    ("self.images = (self.images.half() / 255)", "self.images = (self.images.float() / 255)"),
    ("    net = net.half().cuda()\n", ""),
    (
        "            outputs = model(inputs)\n",
        "            with torch.autocast('cpu', dtype=torch.bfloat16):\n                outputs = model(inputs)\n",
    ),
    ("def main(run):\n", "def main(run):\n    torch.manual_seed(run)\n"),
    ("    return tta_val_acc\n", "    return val_acc, tta_val_acc, total_time_seconds\n"),
]


class CpuEvent:
    """torch.cuda.Event's timing interface on the CPU clock (milliseconds, as CUDA events report)."""

    def __init__(self, enable_timing: bool = True):
        self.time = 0.0

    def record(self) -> None:
        self.time = time.perf_counter()

    def elapsed_time(self, end: "CpuEvent") -> float:
        return 1000 * (end.time - self.time)


def adapted_source(path: Path) -> str:
    source = path.read_text(encoding="utf-8")
    for old, new in CPU_ADAPTATION:
        if source.count(old) != 1:
            sys.exit(f"{path}: expected exactly one {old.strip()!r}; is this legacy/airbench94.py?")
        source = source.replace(old, new)
    return source


def fake_torchvision() -> None:
    """airbench imports torchvision for its download and T.Normalize only; this CPU build cannot import it,
    and the cache files written below make the download unnecessary."""

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.as_tensor(mean).view(-1, 1, 1), torch.as_tensor(std).view(-1, 1, 1)

        def __call__(self, images):
            return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    transforms = types.ModuleType("torchvision.transforms")
    transforms.Normalize = Normalize
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    sys.modules.update({"torchvision": torchvision, "torchvision.transforms": transforms})


def write_cache(data_source: str, folder: Path) -> None:
    data = load_dataset(data_source, progress=False)
    (folder / "cifar10").mkdir()
    for name, images, labels in (
        ("train", data.train_images, data.train_labels),
        ("test", data.test_images, data.test_labels),
    ):
        nhwc = images.permute(0, 2, 3, 1).contiguous()
        torch.save({"images": nhwc, "labels": labels, "classes": data.classes}, folder / "cifar10" / f"{name}.pt")


def main(script: Path, data_source: str, seeds: list[int], out: Path | None, epochs: float | None) -> None:
    tune_cpu_allocator()
    fake_torchvision()
    torch.cuda.Event, torch.cuda.synchronize = CpuEvent, lambda: None
    airbench = types.ModuleType("airbench94")
    print(f"cpu: {cpu_description()['name']}; {script}, adapted for the CPU; seeds {seeds}")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        write_cache(data_source, Path(workdir))
        os.chdir(workdir)  # airbench reads ./cifar10/{train,test}.pt
        exec(compile(adapted_source(script), str(script), "exec"), airbench.__dict__)
        if epochs:  # a shorter run, to check the set-up
            airbench.hyp["opt"]["train_epochs"] = epochs
        airbench.print_columns(airbench.logging_columns_list, is_head=True)
        for seed in seeds:
            started = time.perf_counter()
            accuracy, tta_accuracy, timed = airbench.main(seed)
            wall = time.perf_counter() - started
            results.append(dict(seed=seed, accuracy=accuracy, tta_accuracy=tta_accuracy, timed_s=timed, wall_s=wall))
            print(json.dumps(results[-1]), flush=True)
    if out:
        out.write_text(json.dumps({"cpu": cpu_description()["name"], "script": str(script), "runs": results}, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", type=Path, help="legacy/airbench94.py from KellerJordan/cifar10-airbench")
    parser.add_argument("data", help="the CIFAR-10 source, as for cnnlab train --data")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, one run each (default 0)")
    parser.add_argument("--epochs", type=float, help="train this many epochs instead of the script's 9.9 (a check)")
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    main(args.script.resolve(), args.data, seeds, args.out and args.out.resolve(), args.epochs)
