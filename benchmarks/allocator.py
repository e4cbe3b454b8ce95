"""What glibc's trim threshold costs and buys on a CPU: the speedrun's peak memory and SmallCNN's speed.

    python benchmarks/allocator.py DATA [--trims 1024,256,64] [--repeats 1] [--train-images 6144] [--epochs 3]

`cnnlab.device.tune_cpu_allocator` keeps freed memory in glibc's heap (mmap only from 32 MiB, trim only past the
trim threshold), so that a step does not fault its pages in again. What the heap keeps is resident, so a peak of
the heap and a peak of the mmapped blocks add up even when they come at different moments. Each arm is one trim
threshold in MiB, run in a fresh process, the arms interleaved over the repeats:
- `speedrun`: the speedrun recipe, shortened to `--epochs` over the first `--train-images` training images, with
  its evaluations of the whole test split: peak RSS and seconds per training step;
- `smallcnn`: `cnnlab bench`'s `cnnlab` variant (the chapter's network at batch 128): images/s and page faults
  per step.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys


def speedrun(data: str, train_images: int, epochs: int) -> dict:
    from cnnlab.data import load_dataset
    from cnnlab.recipe_files import load_recipe
    from cnnlab.train import train

    subset = load_dataset(data, progress=False).first_train_images(train_images)
    recipe = load_recipe("speedrun", {"epochs": epochs, "seed": 0})
    result = train(recipe, subset, runs_dir=None, progress=False, plots=False, log=lambda line: None)
    steps = epochs * -(-train_images // recipe.batch_size)
    return {
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # Linux reports kilobytes
        "step_seconds": result.summary["train_seconds"] / steps,
    }


def smallcnn(data: str) -> dict:
    from cnnlab.bench import VARIANTS, measure

    r = measure(VARIANTS["cnnlab"], data, steps=40, warmup=4, batch_size=128, seed=0)
    return {"images_per_s": r["images_per_s"], "page_faults_per_step": r["page_faults_per_step"]}


def spread(values, digits: int) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--trims", default="1024,256,64", help="trim thresholds in MiB, comma-separated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=6144)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--arm", nargs=2, help=argparse.SUPPRESS)  # internal: WORKLOAD TRIM in this process
    args = parser.parse_args()
    if args.arm:
        workload, trim = args.arm
        from cnnlab.device import tune_cpu_allocator

        # The first call's settings hold for the process, so training's own call leaves this threshold in place.
        assert tune_cpu_allocator(trim_threshold=int(trim) << 20)
        out = speedrun(args.data, args.train_images, args.epochs) if workload == "speedrun" else smallcnn(args.data)
        print(json.dumps(out))
        return
    trims = [int(t) for t in args.trims.split(",")]
    results = {}
    for _ in range(args.repeats):
        for workload in ("speedrun", "smallcnn"):
            for trim in trims:
                command = [sys.executable, __file__, args.data, "--arm", workload, str(trim),
                           "--train-images", str(args.train_images), "--epochs", str(args.epochs)]  # fmt: skip
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                results.setdefault((workload, trim), []).append(json.loads(out.strip().splitlines()[-1]))
    from cnnlab.device import cpu_description

    cpu = cpu_description()
    print(f"CPU: {cpu['name']} (family {cpu['family']}, model {cpu['model']}, {cpu['isa']}); {args.repeats} repeats; "
          f"speedrun: {args.epochs} epochs over {args.train_images} training images")  # fmt: skip
    print("trim threshold | speedrun peak RSS, GB | speedrun s/step | SmallCNN images/s | SmallCNN faults/step")
    for trim in trims:
        s, c = results[("speedrun", trim)], results[("smallcnn", trim)]
        columns = [
            spread([r["peak_rss_gb"] for r in s], 2),
            spread([r["step_seconds"] for r in s], 2),
            spread([r["images_per_s"] for r in c], 0),
            spread([r["page_faults_per_step"] for r in c], 0),
        ]
        print(f"{trim} MiB | " + " | ".join(columns))


if __name__ == "__main__":
    main()
