"""Read a run's learning curves the way Section 4 of the chapter does (Figure 19.5.2).

- Overfitting: training keeps improving while the held-out accuracy peaks and declines, or the
  train-held-out gap is wide (memorisation).
- Still improving: the held-out accuracy was still climbing when training stopped (the run was cut
  short; a wide gap is not yet overfitting while the held-out curve rises).
- Underfitting: both curves are close and low, and flat (the model lacked capacity).
- Good fit: both high, with a small, stable gap.

The held-out curve is validation accuracy when the run held a split out, else test accuracy
(and the diagnosis says so: tuning against the test split makes it optimistic). The thresholds below
are floors: on a small held-out split they widen to the sampling error of its accuracy (a swing of a
few images is not a trend), and the trends are read over the last 3 epochs, or fewer in a short run.
Remedies are commands for this run's data with values that fit it (remedies.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .analysis import RunRecord
from .remedies import RunFacts, remedy_commands

# Thresholds, in accuracy points (percent), chosen against the noise of real CIFAR-10 runs (10,000 held-out
# images): the test accuracy of a healthy cosine run wanders by a few tenths of a point between late epochs.
DECLINE = 1.0  # best held-out accuracy minus the mean of (up to) the last 3 epochs after it: a real decline
WIDE_GAP = 10.0  # training minus held-out accuracy beyond this is memorisation
SMALL_GAP = 4.0  # below this the curves are "close"
LOW_TRAIN_ACC = 75.0  # close curves below this training accuracy are "low"
STILL_RISING = 1.0  # held-out accuracy gained over the last 3 epochs: training stopped too soon
LOSS_FALLING = 0.05  # relative fall of training loss over the last 3 epochs: still learning
ANNEALED = 0.1  # a final learning rate below this share of the peak: the schedule has run its course
STILL_RISING_ANNEALED = 2.0  # ...and then a climb this steep still says "more epochs": the real 30-epoch seed
# run gains 0.8 points over its last 3 epochs, a 15-epoch one 3.3 (and 30 epochs add 2.3)
NOISE_MULTIPLE = {"decline": 2.0, "rising": 2.0, "small_gap": 2.0, "wide_gap": 3.0}  # of the sampling error

REMEDIES = {
    "augmentation": "more data augmentation (the recipe's crop and flip, or stronger: cutout, random erasing)",
    "weight_decay": "more weight decay",
    "early_stopping": "early stopping on the validation metric, keeping best.pt",
    "label_smoothing": "label smoothing, which keeps the network from growing overconfident on what it memorised",
    "longer": "longer training (twice the epochs)",
    "larger": "a larger network (Chapter 20's ResNets)",
    "less_regularization": "less regularisation (half the weight decay)",
    "higher_lr": "a tuned peak learning rate, read off a learning-rate sweep",
    "nothing": "nothing urgent: the curves look healthy; test-time augmentation may still add a little",
}


@dataclass
class Diagnosis:
    verdict: str  # "still improving", "underfitting", "good fit" or "overfitting"
    reasons: list[str]
    numbers: dict
    remedies: list[str] = field(default_factory=list)  # most promising first
    commands: list[str] = field(default_factory=list)  # beside each remedy, for a run folder: what to run
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        n = self.numbers
        lines = [f"verdict: {self.verdict.upper()}"]
        lines += [f"  because {reason}" for reason in self.reasons]
        split, w = n["split"], n["window"]
        numbers = [
            ("final training accuracy", f"{n['final_train_acc']:.2f}%  (running, on the training batches)"),
            (f"final {split} accuracy", f"{n['final_eval_acc']:.2f}%"),
            (f"train-{split} gap", f"{n['gap']:+.2f} points"),
            (f"best {split} accuracy", f"{n['best_eval_acc']:.2f}% at epoch {n['best_epoch']} of {n['last_epoch']}"),
            ("decline since the peak", f"{n['decline']:.2f} points (best minus the mean of up to 3 epochs after it)"),
            (
                f"last {w} epoch{'s' if w > 1 else ''}",
                f"{split} accuracy {n['recent_gain']:+.2f} points, training loss {100 * n['loss_change']:+.1f}%"
                f" ({'still falling' if n['loss_still_falling'] else 'flat'})",
            ),
            ("noise floor", f"{n['noise']:.2f} points (sampling error of the {split} accuracy{n['noise_basis']})"),
        ]
        lines.append("numbers:")
        lines += [f"  {label:<26}{value}" for label, value in numbers]
        lines.append("remedies, most promising first:")
        for k, remedy in enumerate(self.remedies, start=1):
            lines.append(f"  {k}. {remedy}")
            if k <= len(self.commands):
                lines.append(f"     {self.commands[k - 1]}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def sampling_error(accuracy: float, images: int | None) -> float:
    """The standard error, in points, of an accuracy measured on `images` images (0 when unknown)."""
    if not images:
        return 0.0
    p = min(max(accuracy / 100, 0.02), 0.98)
    return 100 * math.sqrt(p * (1 - p) / images)


def curve_numbers(rows: list[dict], held_out_images: int | None = None) -> dict:
    """What the verdict is read from: final, best and recent accuracies, the gap, the decline since the
    peak, the recent trend of loss and accuracy, whether the schedule has annealed, and the thresholds
    for this run's held-out split."""
    split = "val" if "val_acc" in rows[0] else "test"
    held_out = [r[f"{split}_acc"] for r in rows]
    losses = [r["train_loss"] for r in rows]
    best_index = max(range(len(held_out)), key=held_out.__getitem__)
    after_peak = held_out[max(best_index + 1, len(held_out) - 3) :]  # a smoothed "now", only from after the peak
    window = max(1, min(3, len(rows) - 1))  # a 3-epoch run's trend is its whole length
    earlier = max(0, len(rows) - 1 - window)
    noise = sampling_error(held_out[best_index], held_out_images)
    numbers = {
        "split": split,
        "final_train_acc": rows[-1]["train_acc"],
        "final_eval_acc": held_out[-1],
        "gap": rows[-1]["train_acc"] - held_out[-1],
        "best_eval_acc": held_out[best_index],
        "best_epoch": rows[best_index]["epoch"],
        "last_epoch": rows[-1]["epoch"],
        "decline": held_out[best_index] - sum(after_peak) / len(after_peak) if after_peak else 0.0,
        "window": window,
        "recent_gain": held_out[-1] - held_out[earlier],
        "loss_change": (losses[-1] - losses[earlier]) / losses[earlier] if losses[earlier] else 0.0,
        "noise": noise,
        "noise_basis": f" on {held_out_images:,} images" if held_out_images else ", unknown without a run folder",
    }
    floors = {"decline": DECLINE, "rising": STILL_RISING, "small_gap": SMALL_GAP, "wide_gap": WIDE_GAP}
    numbers["thresholds"] = {k: max(floor, NOISE_MULTIPLE[k] * noise) for k, floor in floors.items()}
    numbers["thresholds"]["rising_annealed"] = max(STILL_RISING_ANNEALED, NOISE_MULTIPLE["rising"] * noise)
    numbers["loss_still_falling"] = -numbers["loss_change"] >= LOSS_FALLING
    # A schedule that has annealed (cosine near zero) makes the last epochs climb by itself: some of that is
    # the schedule finishing, not training cut short, so an annealed run must climb more to count as unfinished.
    rates = [r["lr"] for r in rows if "lr" in r]
    numbers["schedule_annealed"] = bool(rates) and rates[-1] <= ANNEALED * max(rates)
    rising = numbers["thresholds"]["rising_annealed" if numbers["schedule_annealed"] else "rising"]
    numbers["held_out_rising"] = numbers["recent_gain"] >= rising
    numbers["still_improving"] = numbers["held_out_rising"] or (
        numbers["loss_still_falling"] and not numbers["schedule_annealed"]
    )
    return numbers


def diagnose_rows(rows: list[dict], facts: RunFacts | None = None) -> Diagnosis:
    """The verdict from metric rows (dicts with epoch, train_loss, train_acc and val_acc or test_acc); with
    `facts` about the run (its folder, data and recipe), thresholds fit to its held-out split and remedies
    as commands."""
    facts = facts or RunFacts()
    numbers = curve_numbers(rows, facts.held_out_images)
    verdict, reasons, notes, remedies = _verdict(numbers, facts)
    if facts.stopped_early:
        notes.append(
            f"early stopping ended the run at epoch {numbers['last_epoch']}, "
            f"{numbers['last_epoch'] - numbers['best_epoch']} epochs after its best ({numbers['best_epoch']}); "
            "best.pt holds that epoch, so more epochs would not help"
        )
        remedies = [k for k in remedies if k not in ("longer", "early_stopping")]
    if numbers["split"] == "test":
        notes.append(
            "no validation split: the held-out curve is the test set, so picking epochs or recipes by it is "
            "optimistic; train with a validation split (see early stopping above, or --val-split) for an honest one"
        )
    if len(rows) < 4:
        notes.append(f"only {len(rows)} epochs: trends this short are rough")
    commands = remedy_commands(remedies, facts, numbers) if facts.run else {}
    if facts.run:  # a remedy this run cannot take (no larger network, nothing left to add) is not offered
        remedies = [k for k in remedies if k in commands]
    return Diagnosis(
        verdict,
        reasons,
        numbers,
        [REMEDIES[k] for k in remedies],
        [commands[k] for k in remedies if k in commands],
        notes,
    )


def _verdict(numbers: dict, facts: RunFacts) -> tuple[str, list[str], list[str], list[str]]:
    """(verdict, reasons, notes, remedy keys, most promising first) from the curve's numbers."""
    split, limits = numbers["split"], numbers["thresholds"]
    peaked_early = numbers["best_epoch"] <= numbers["last_epoch"] - 2
    reasons, notes = [], []
    if numbers["decline"] >= limits["decline"] and peaked_early:
        verdict = "overfitting"
        reasons.append(
            f"{split} accuracy peaked at epoch {numbers['best_epoch']} ({numbers['best_eval_acc']:.2f}%) and has "
            f"since declined by {numbers['decline']:.2f} points while training went on"
        )
        if numbers["gap"] >= limits["wide_gap"]:
            reasons.append(f"training accuracy is {numbers['gap']:.1f} points above {split} accuracy")
        remedies = ["early_stopping", "augmentation", "weight_decay", "label_smoothing"]
    elif numbers["held_out_rising"] and not facts.stopped_early:
        verdict = "still improving"
        annealed = ", more than the annealing schedule alone explains" if numbers["schedule_annealed"] else ""
        reasons.append(
            f"{split} accuracy rose {numbers['recent_gain']:+.2f} points over the last {numbers['window']} epoch(s), "
            f"to {numbers['final_eval_acc']:.2f}%{annealed}: training stopped while it was still learning"
        )
        if numbers["gap"] >= limits["wide_gap"]:
            notes.append(
                f"training accuracy is {numbers['gap']:.1f} points above {split} accuracy; while the {split} curve "
                "still rises that is not yet overfitting, but watch it in a longer run"
            )
        remedies = ["longer", "higher_lr", "larger"]
    elif numbers["gap"] >= limits["wide_gap"]:
        verdict = "overfitting"
        reasons.append(
            f"training accuracy ({numbers['final_train_acc']:.1f}%) is {numbers['gap']:.1f} points above "
            f"{split} accuracy ({numbers['final_eval_acc']:.1f}%): the network memorises the training set"
        )
        remedies = ["augmentation", "weight_decay", "label_smoothing", "early_stopping"]
    elif numbers["gap"] < limits["small_gap"] and (
        numbers["final_train_acc"] < LOW_TRAIN_ACC or numbers["still_improving"]
    ):
        verdict = "underfitting"
        if numbers["final_train_acc"] < LOW_TRAIN_ACC:
            reasons.append(
                f"training accuracy is only {numbers['final_train_acc']:.1f}% and {split} accuracy is close to it "
                f"(gap {numbers['gap']:+.1f} points): the model has not fit the training set"
            )
        if numbers["loss_still_falling"]:
            reasons.append(f"the training loss fell {-100 * numbers['loss_change']:.1f}% over the last epochs")
        remedies = ["longer", "larger", "less_regularization", "higher_lr"]
        if not numbers["loss_still_falling"]:
            remedies = ["larger", "less_regularization", "higher_lr", "longer"]  # flat and low: capacity, not time
    else:
        verdict = "good fit"
        settled = (
            "no longer climbing"
            if numbers["recent_gain"] < limits["rising"]
            else f"its last climb ({numbers['recent_gain']:+.2f} points) came as the learning rate annealed"
        )
        reasons.append(
            f"{split} accuracy is {numbers['final_eval_acc']:.2f}%, {numbers['gap']:+.1f} points from training, "
            f"within {numbers['decline']:.2f} points of its best, and {settled}"
        )
        remedies = ["nothing", "longer"]
    return verdict, reasons, notes, remedies


def diagnose(run: RunRecord) -> Diagnosis:
    return diagnose_rows(run.rows, RunFacts.of(run))
