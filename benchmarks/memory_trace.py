"""Where a CPU training run's resident memory goes, minute by minute: glibc's heap against its mmapped blocks.

    python benchmarks/memory_trace.py DATA [--recipe speedrun] [--epochs 2] [--train-images N] [--interval 1]
        [--trim-each-epoch]

Trains the recipe (shortened to `--epochs`, seed 0, no run folder; `--train-images` keeps only the first N
training images, for a quick look) while a thread reads, every `--interval`
seconds, the process's resident memory (/proc/self/status), the heap's resident pages (/proc/self/smaps) and
glibc's own account of the heap (mallinfo2: its size, the bytes in use and free in it, and the bytes in mmapped
blocks). Printed: each minute's sample with the highest RSS, and the highest "live" total (heap in use plus
mmapped), which is what the process would hold if freed heap memory cost nothing. `--trim-each-epoch` calls
malloc_trim(0) after every epoch (a lever tried: BENCHMARKS.md). Linux with glibc 2.33 or later only.
"""

import argparse
import ctypes
import threading
import time

M_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in M_FIELDS]


LIBC = ctypes.CDLL("libc.so.6")
LIBC.mallinfo2.restype = MallInfo2
MIB = 1 << 20


def heap_resident_mib() -> int:
    """The Rss line of the [heap] mapping in /proc/self/smaps."""
    in_heap = False
    with open("/proc/self/smaps") as f:
        for line in f:
            if line.rstrip().endswith("[heap]"):
                in_heap = True
            elif in_heap and line.startswith("Rss:"):
                return int(line.split()[1]) // 1024
    return 0


def sample(started: float, epoch: int) -> dict:
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))
    m = LIBC.mallinfo2()
    return {
        "seconds": time.perf_counter() - started,
        "epoch": epoch,
        "rss": rss,
        "heap_resident": heap_resident_mib(),
        "heap": m.arena // MIB,
        "heap_in_use": m.uordblks // MIB,
        "heap_free": m.fordblks // MIB,
        "mmapped": m.hblkhd // MIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--recipe", default="speedrun")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, help="keep only the first N training images")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--trim-each-epoch", action="store_true")
    args = parser.parse_args()
    from cnnlab.data import load_dataset
    from cnnlab.device import cpu_description
    from cnnlab.recipe_files import load_recipe
    from cnnlab.train import train

    samples, epochs_done, started = [], [0], time.perf_counter()

    def sampler():
        while True:
            samples.append(sample(started, epochs_done[0]))
            time.sleep(args.interval)

    class EpochEnd:
        def on_epoch_end(self, state, row):
            epochs_done[0] = row["epoch"]
            if args.trim_each_epoch:
                LIBC.malloc_trim(0)

    data = load_dataset(args.data, progress=False)
    if args.train_images:
        data = data.first_train_images(args.train_images)
    threading.Thread(target=sampler, daemon=True).start()
    recipe = load_recipe(args.recipe, {"epochs": args.epochs, "seed": 0})
    train(recipe, data, runs_dir=None, progress=False, plots=False, callbacks=[EpochEnd()], log=lambda line: None)
    cpu = cpu_description()
    print(f"CPU: {cpu['name']} (family {cpu['family']}, model {cpu['model']}, {cpu['isa']}); {args.recipe}, "
          f"{args.epochs} epochs{', malloc_trim(0) after each' if args.trim_each_epoch else ''}; MiB")  # fmt: skip
    print("minute | epochs done | RSS | heap resident | heap | in use | free | mmapped | in use + mmapped")
    by_minute = {}
    for s in samples:
        minute = int(s["seconds"] // 60)
        if minute not in by_minute or s["rss"] > by_minute[minute]["rss"]:
            by_minute[minute] = s
    for minute, s in by_minute.items():
        print(f"{minute} | {s['epoch']} | {s['rss']} | {s['heap_resident']} | {s['heap']} | {s['heap_in_use']} | "
              f"{s['heap_free']} | {s['mmapped']} | {s['heap_in_use'] + s['mmapped']}")  # fmt: skip
    peak = max(samples, key=lambda s: s["rss"])
    live = max(s["heap_in_use"] + s["mmapped"] for s in samples)
    print(f"peak RSS {peak['rss']} MiB at {peak['seconds']:.0f} s; highest heap in use + mmapped {live} MiB")


if __name__ == "__main__":
    main()
