"""Running a sweep's trials: each is `cnnlab train` in a process of its own, on this machine's cores (a
pool of workers, each trial with its share of the cores as threads) or as Ray tasks on a cluster.

A trial can be started more than once: after a SIGKILLed sweep, a crashed worker or a lost Ray node. So
`run_trial` makes every start safe: it waits until no process holds the run's lock (a killed worker's
orphan checkpoints first, told by PR_SET_PDEATHSIG), resumes a run with a checkpoint, and clears a run
folder that died before its first one (nothing in it to keep)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import CnnlabError, UsageError

POLL_SECONDS = 1.0  # how often a running trial's new metrics rows are read (pruning)


def trial_state(run: Path) -> str:
    """done (summary.json written), partial (a checkpoint to resume) or new."""
    if (run / "summary.json").is_file():
        return "done"
    return "partial" if (run / "last.pt").is_file() else "new"


def trial_summary(run: Path) -> dict:
    """A finished trial's summary.json, holding the numbers a sweep's results are made of. A damaged one
    is one line that says how to train that trial again, not a traceback in the middle of a sweep."""
    from .names import shown
    from .runfiles import finite_number, read_json

    remedy = f"delete {shown(run)} and rerun the sweep to train that trial again"
    summary = read_json(run / "summary.json", remedy)
    needed = [summary.get(k) for k in ("final_test_acc", "train_seconds", "wall_seconds")]
    optional = [summary.get(k) for k in ("final_val_acc", "final_tta_test_acc")]
    if not all(map(finite_number, needed)) or not all(v is None or finite_number(v) for v in optional):
        damage = "a score or a time is missing or not a number"
        raise CnnlabError(f"{shown(run / 'summary.json')} is damaged ({damage}); {remedy}")
    return summary


def trial_command(spec, folder: Path, trial: str, threads: int) -> list[str]:
    run = folder / "runs" / trial
    if trial_state(run) == "partial":
        return [sys.executable, "-m", "cnnlab", "train", "--resume", str(run), "--no-progress", "--no-plots"]
    data = ["--data", spec.data] + (["--labels", spec.labels] if spec.labels else [])
    return [
        sys.executable, "-m", "cnnlab", "train", "--recipe", str(folder / "recipes" / f"{trial}.toml"), *data,
        "--runs-dir", str(folder / "runs"), "--name", trial, "--threads", str(threads), "--no-progress", "--no-plots",
    ]  # fmt: skip


def _wait_for_lock(run: Path) -> None:
    """Block until no process trains in `run` (the lock of runs.RunLock): a start never races an orphan."""
    import fcntl

    if not (run / ".lock").is_file():
        return
    with open(run / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, before the trial's process takes it


def run_trial(spec, folder: Path, trial: str, threads: int, on_row=None, started=None) -> dict:
    """Train one trial to its end. on_row(row) is called with each new epoch row and may return True to stop
    the trial (it checkpoints: SIGTERM); started(process) is told of the process. Returns what happened."""
    folder = Path(folder)
    run = folder / "runs" / trial
    _wait_for_lock(run)
    if run.is_dir() and trial_state(run) == "new":
        shutil.rmtree(run)  # died before its first checkpoint
    if trial_state(run) != "done":
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        (folder / "logs").mkdir(exist_ok=True)
        with open(folder / "logs" / f"{trial}.log", "a") as log:
            process = subprocess.Popen(
                trial_command(spec, folder, trial, threads), env=env, stdout=subprocess.DEVNULL, stderr=log,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
            if started is not None:
                started(process)
            stopped = _watch(process, run / "metrics.jsonl", on_row)
        if process.returncode != 0 or stopped:
            lines = (folder / "logs" / f"{trial}.log").read_text(errors="replace").strip().splitlines()
            error = lines[-1] if lines else ""
            return {"trial": trial, "returncode": process.returncode, "stopped": stopped, "error": error}
    return {"trial": trial, "returncode": 0, "stopped": False, "summary": trial_summary(run)}


def _watch(process: subprocess.Popen, metrics: Path, on_row) -> bool:
    """Wait for the process; with on_row, hand it each new epoch row until it asks to stop."""
    if on_row is None:
        process.wait()
        return False
    seen, stopped = 0, False
    while True:
        try:
            process.wait(timeout=POLL_SECONDS)
            return stopped
        except subprocess.TimeoutExpired:
            pass
        try:
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        except (OSError, ValueError):
            continue  # not written yet, or being replaced (it is rewritten whole, atomically)
        for row in rows[seen:]:
            if not stopped and on_row(row):
                process.send_signal(signal.SIGTERM)  # checkpoints and exits: a pruned trial can still be resumed
                stopped = True
        seen = len(rows)


def _die_with_parent() -> None:
    """In the child, before exec: a SIGTERM when the process that started it dies, even by SIGKILL, so no
    trial goes on writing its run folder unwatched (it checkpoints and stops; the rerun resumes it)."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG, Linux only
    except (OSError, AttributeError):
        pass


def report_line(result: dict, done: int, total: int) -> str:
    if "summary" in result:
        s = result["summary"]
        return f"[{done}/{total}] {result['trial']}: {s['final_test_acc']:.2f}% in {s['wall_seconds']:.0f} s"
    if result.get("stopped"):
        return f"[{done}/{total}] {result['trial']}: pruned (checkpointed)"
    return f"[{done}/{total}] {result['trial']} failed: {result.get('error', '')}"


class LocalWorkers:
    """Up to `count` jobs at once on this machine, each starting trial processes of `threads` threads. A
    SIGINT or SIGTERM to the sweep stops starting jobs and passes SIGTERM to the running trials, which
    checkpoint; `map` then says how to continue."""

    def __init__(self, count: int, threads: int):
        self.count, self.threads = count, threads
        self.lock, self.running, self.stopped = threading.Lock(), set(), None

    def map(self, work, items: list) -> None:
        """work(item, started) for each item, `count` at a time; it passes `started` to run_trial."""

        def one(item) -> None:
            if self.stopped is None:
                work(item, self._started)
            with self.lock:
                self.running = {p for p in self.running if p.poll() is None}

        with self._stop_on_signal(), ThreadPoolExecutor(max_workers=self.count) as pool:
            list(pool.map(one, items))
        if self.stopped is not None:
            raise CnnlabError(
                f"stopped by signal {self.stopped}; finished trials are kept and the others checkpointed: "
                "rerun the same command to continue"
            )

    def _started(self, process) -> None:
        with self.lock:
            self.running.add(process)
            if self.stopped is not None:
                process.send_signal(signal.SIGTERM)

    @contextlib.contextmanager
    def _stop_on_signal(self):
        def stop(signum, _frame):
            self.stopped = signum
            with self.lock:
                for process in self.running:
                    process.send_signal(signal.SIGTERM)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _ray_trial(spec, folder: str, trial: str, threads: int) -> dict:
    """A trial as a Ray task, on whichever node Ray picks: the sweep folder must be on storage it sees."""
    import socket

    if not (Path(folder) / "sweep.json").is_file():
        raise RuntimeError(f"{folder} is not visible on {socket.gethostname()}: put --out on storage every node shares")
    return run_trial(spec, Path(folder), trial, threads)


def run_on_ray(spec, folder: Path, trials: list[str], address: str, cpus: int, gpus: float, done) -> None:
    """Each trial a Ray task with `cpus` CPUs (its threads) and `gpus` GPUs. A task whose worker or node dies
    is retried by Ray (up to three times), and the retry resumes the run from its last checkpoint."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'cnnlab[ray]'") from None
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        message = f"cannot join the Ray cluster at {address} ({first}); start one with `ray start --head`"
        raise CnnlabError(message) from None
    try:
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=3)(_ray_trial)
        pending = {task.remote(spec, str(folder.resolve()), trial, cpus): trial for trial in trials}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            trial = pending.pop(ref)
            try:
                done(ray.get(ref))
            except ray.exceptions.RayError as e:
                lines = str(e).strip().splitlines()
                done({"trial": trial, "returncode": None, "stopped": False, "error": lines[-1] if lines else "lost"})
    finally:
        ray.shutdown()
