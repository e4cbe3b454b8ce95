"""The learning-rate finder (Smith 2017, "Cyclical learning rates"; fastai's lr_find): train a fresh model
for a few hundred steps while the rate grows exponentially from tiny to far too large, and read a good
peak rate off the curve of loss against rate.

The loss of single batches is noisy, so the curve is smoothed with a bias-corrected exponential average
(the first points are not pulled towards zero). The sweep stops early once the smoothed loss is four
times its minimum: past that point the model is diverging and the rest of the curve says nothing. Three
rules read the curve; `valley` is the one suggested:
- valley: the longest stretch over which the smoothed loss keeps falling, and the rate halfway along it
  (fastai's default since 2.5: robust to a noisy start and to a sharp cliff at the end);
- steepest: where the loss falls fastest per decade of rate;
- minimum/10: a tenth of the rate at the lowest loss (the rule of thumb of the original paper).
Nothing is written: the caller decides what to keep (the CLI writes a plot and, when asked, a recipe).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .data import Dataset
from .epoch import train_step
from .errors import UsageError
from .prepare import prepare
from .recipe import Recipe
from .schedule import set_learning_rate

SMOOTHING = 0.98  # weight of the past in the averaged loss
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its minimum
RULES = ("valley", "steepest", "minimum/10")


@dataclass
class LRFinding:
    rates: list[float]  # one per step taken
    losses: list[float]  # each step's batch loss
    smoothed: list[float]
    suggestions: dict[str, float]  # rule -> rate, for each of RULES the curve allows
    stopped_early: bool  # the loss diverged before the last rate

    @property
    def suggestion(self) -> float:
        return self.suggestions["valley"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"suggestion": self.suggestion, "rule": "valley"}


def find_learning_rate(
    recipe: Recipe, data: Dataset, start: float = 1e-5, end: float = 10.0, steps: int = 200
) -> LRFinding:
    """Sweep the recipe's peak rate from `start` to `end` over `steps` steps on a fresh model."""
    check_sweep(start, end, steps)
    # The sweep sets the rate itself: no schedule, warm-up, lookahead or weight averaging on top of it.
    sweep = dataclasses.replace(recipe, schedule="constant", warmup_epochs=0.0, lookahead=0, ema=0.0, early_stop=0)
    state = prepare(sweep, data).state
    rates, losses, smoothed = [], [], []
    average, step = 0.0, 0
    while step < steps:
        for x, y in state.train_loader:
            rate = start * (end / start) ** (step / (steps - 1))
            set_learning_rate(state.optimizer, rate)
            loss = float(train_step(state, x, y, epoch=0, step=step + 1)[0])
            if not math.isfinite(loss):
                return _finding(rates, losses, smoothed, stopped_early=True)
            average = SMOOTHING * average + (1 - SMOOTHING) * loss
            rates.append(rate)
            losses.append(loss)
            smoothed.append(average / (1 - SMOOTHING ** (step + 1)))
            step += 1
            if smoothed[-1] > DIVERGED * min(smoothed) or step == steps:
                return _finding(rates, losses, smoothed, stopped_early=step < steps)
    raise AssertionError("unreachable: the loop returns at the last step")


def check_sweep(start: float, end: float, steps: int) -> None:
    if not (0 < start < end and math.isfinite(end)):
        raise UsageError(f"the sweep needs 0 < start < end (got start {start:g}, end {end:g})")
    if steps < 10:
        raise UsageError(f"a sweep of {steps} steps is too short to read; give at least 10")


def _finding(rates, losses, smoothed, stopped_early: bool) -> LRFinding:
    if len(rates) < 5:
        raise UsageError(
            f"the loss diverged after {len(rates)} steps, at rate {rates[-1] if rates else 0:g}; start the sweep "
            "lower (--start)"
        )
    return LRFinding(rates, losses, smoothed, suggestions(rates, smoothed), stopped_early)


def suggestions(rates: list[float], smoothed: list[float]) -> dict[str, float]:
    """Each rule's reading of the smoothed curve (see the module docstring)."""
    logs = [math.log10(r) for r in rates]
    slopes = [(smoothed[k + 1] - smoothed[k - 1]) / (logs[k + 1] - logs[k - 1]) for k in range(1, len(rates) - 1)]
    lowest = min(range(len(smoothed)), key=smoothed.__getitem__)
    first, last = longest_descent(smoothed)
    return {
        "valley": rates[(first + last) // 2],
        "steepest": rates[1 + min(range(len(slopes)), key=slopes.__getitem__)],
        "minimum/10": rates[lowest] / 10,
    }


def longest_descent(values: list[float]) -> tuple[int, int]:
    """(first, last) index of the longest strictly falling subsequence of `values`: the curve's valley,
    skipping the bumps of noise within it. Of equally long ones, the one starting latest, so a flat start
    is not counted as part of the fall. Quadratic, for a few hundred points."""
    length = [1] * len(values)
    before = [-1] * len(values)
    for i in range(len(values)):
        for j in range(i):
            if values[j] > values[i] and length[j] + 1 >= length[i]:
                length[i], before[i] = length[j] + 1, j
    last = max(range(len(values)), key=length.__getitem__)
    first = last
    while before[first] != -1:
        first = before[first]
    return first, last
