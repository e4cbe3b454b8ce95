"""What the speedrun network's max-pools and batch norms keep for the backward pass costs a training step:
memory and time.

    python benchmarks/pool_indices.py [--model speedrun] [--batch 1024] [--steps 4] [--repeats 3]
        [--precision auto|fp32|bf16] [--arms pytorch,cnnlab-pool,cnnlab]

Each arm trains `--steps` steps of the model on a random batch in a fresh process (so that its peak resident
memory is its own), the arms interleaved over the repeats:
- `pytorch`: F.max_pool2d, which keeps its whole input and the window maxima's positions as int64 for the backward
  pass, and PyTorch's batch norm, which keeps its input;
- `cnnlab-pool`: max_pool_2x2, which keeps the positions only, as int16, and PyTorch's batch norm;
- `cnnlab`: max_pool_2x2 and the batch norm that keeps its output, which the GELU after it keeps anyway.
Printed per arm: what one forward pass saves for the backward pass, by dtype, the peak RSS (median, min-max) and
the median step time.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def build(model_name: str):
    from cnnlab.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, 10)
    model.initialise_from_data(torch.randn(500, 3, 32, 32))
    return model.to(memory_format=torch.channels_last)


ARMS = ("pytorch", "cnnlab-pool", "cnnlab")


def use_arm(arm: str) -> None:
    import cnnlab.models.speedrun as speedrun

    if arm == "pytorch":  # the stages call the module's max_pool_2x2 by name
        speedrun.max_pool_2x2 = lambda x: F.max_pool2d(x, 2)
    if arm != "cnnlab":
        speedrun.FrozenScaleBatchNorm.saves_output = False


def saved_bytes_by_dtype(model_name: str, batch: int, precision: str) -> dict[str, int]:
    """What one forward pass saves, by dtype; a tensor saved twice (a batch norm's output, which the GELU after it
    saves too) counts once."""
    from cnnlab.device import autocast

    model, totals, seen = build(model_name), {}, set()

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in seen:
            seen.add(tensor.untyped_storage().data_ptr())
            totals[str(tensor.dtype)] = totals.get(str(tensor.dtype), 0) + tensor.numel() * tensor.element_size()
        return tensor

    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(torch.device("cpu"), precision):
        model(x)
    return totals  # parameters saved by reference are counted too: a small share beside the activations


def one_arm(arm: str, model_name: str, batch: int, steps: int, precision: str) -> dict:
    from cnnlab.device import autocast, tune_cpu_allocator

    tune_cpu_allocator()  # as training runs: freed blocks stay in the heap, so RSS is the true peak
    use_arm(arm)
    model = build(model_name)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with autocast(torch.device("cpu"), precision):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kilobytes
    saved = saved_bytes_by_dtype(model_name, batch, precision)  # after the peak is read: it allocates too
    return {"peak_rss": peak, "step_seconds": statistics.median(times[1:] or times), "saved": saved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="speedrun")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--arms", default=",".join(ARMS), help="a comma-separated list of " + ", ".join(ARMS))
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process
    args = parser.parse_args()
    from cnnlab.device import cpu_description, resolve_precision

    precision = resolve_precision(args.precision, torch.device("cpu"))
    if args.arm:
        print(json.dumps(one_arm(args.arm, args.model, args.batch, args.steps, precision)))
        return
    arms = args.arms.split(",")
    if not arms or not set(arms) <= set(ARMS):
        parser.error(f"--arms takes a comma-separated list of {', '.join(ARMS)}")
    results = {arm: [] for arm in arms}
    for _ in range(args.repeats):
        for arm in results:
            command = [sys.executable, __file__, "--arm", arm, "--model", args.model, "--batch", str(args.batch),
                       "--steps", str(args.steps), "--precision", precision]  # fmt: skip
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            results[arm].append(json.loads(out.stdout))
    cpu = cpu_description()
    print(f"CPU: {cpu['name']} (family {cpu['family']}, model {cpu['model']}, {cpu['isa']}); {args.model}, "
          f"batch {args.batch}, precision {precision}, {args.steps} steps per arm, {args.repeats} repeats")  # fmt: skip
    print("arm | saved by one forward pass | peak RSS, median (min-max) | step s, median (min-max)")
    for arm, rows in results.items():
        saved = ", ".join(f"{dtype} {size / 1e6:,.0f} MB" for dtype, size in sorted(rows[0]["saved"].items()))
        peaks = [r["peak_rss"] / 1e9 for r in rows]
        steps = [r["step_seconds"] for r in rows]
        print(f"{arm} | {saved} | {statistics.median(peaks):.2f} GB ({min(peaks):.2f}-{max(peaks):.2f}) | "
              f"{statistics.median(steps):.2f} ({min(steps):.2f}-{max(steps):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
