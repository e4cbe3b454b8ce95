"""Read a run's learning curves the way Section 4 of the chapter does (Figure 19.5.2).

- Overfitting: training keeps improving while the held-out accuracy peaks and declines, or the
  train-held-out gap is wide (memorisation).
- Underfitting: both curves are close, and either low or still climbing when training stopped
  (the model lacked capacity or training time).
- Good fit: both high, with a small, stable gap.

The held-out curve is validation accuracy when the run held a split out, else test accuracy
(and the diagnosis says so: tuning against the test split makes it optimistic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .analysis import RunRecord

# Thresholds, in accuracy points (percent), chosen against the noise of real CIFAR-10 runs: the test
# accuracy of a healthy cosine run wanders by a few tenths of a point between late epochs.
DECLINE = 1.0  # best held-out accuracy minus the mean of (up to) the last 3 epochs after it: a real decline
WIDE_GAP = 10.0  # training minus held-out accuracy beyond this is memorisation
SMALL_GAP = 4.0  # below this the curves are "close"
LOW_TRAIN_ACC = 75.0  # close curves below this training accuracy are "low"
STILL_RISING = 1.0  # held-out accuracy gained over the last 3 epochs: training stopped too soon
LOSS_FALLING = 0.05  # relative fall of training loss over the last 3 epochs: still learning
ANNEALED = 0.1  # a final learning rate below this share of the peak: the schedule has run its course
STILL_RISING_ANNEALED = 2.0  # ...and then a climb this steep still says "more epochs": the real 30-epoch seed
# run gains 0.8 points over its last 3 epochs, a 15-epoch one 3.3 (and 30 epochs add 2.3)

REMEDIES = {
    "augmentation": "more data augmentation (the recipe's crop and flip, or stronger: cutout, colour jitter)",
    "weight_decay": "more weight decay (--weight-decay 1e-3)",
    "early_stopping": "early stopping on the validation metric (--val-split 5000 --early-stop 5), keeping best.pt",
    "dropout": "dropout before the classifier",
    "smaller": "a smaller network (fewer channels or blocks)",
    "longer": "longer training (--epochs, e.g. twice as many)",
    "larger": "a larger network (more channels or blocks; Chapter 20's ResNets)",
    "less_regularization": "less regularisation (lower --weight-decay, lighter augmentation)",
    "higher_lr": "a better learning-rate schedule (cosine from a tuned --lr) if the loss is falling slowly",
    "nothing": "nothing urgent: the curves look healthy; gains now come from the recipe "
    "(test-time augmentation, label smoothing)",
}


@dataclass
class Diagnosis:
    verdict: str  # "underfitting", "good fit" or "overfitting"
    reasons: list[str]
    numbers: dict
    remedies: list[str] = field(default_factory=list)  # most promising first
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        n = self.numbers
        lines = [f"verdict: {self.verdict.upper()}"]
        lines += [f"  because {reason}" for reason in self.reasons]
        split = n["split"]
        numbers = [
            ("final training accuracy", f"{n['final_train_acc']:.2f}%  (running, on the training batches)"),
            (f"final {split} accuracy", f"{n['final_eval_acc']:.2f}%"),
            (f"train-{split} gap", f"{n['gap']:+.2f} points"),
            (f"best {split} accuracy", f"{n['best_eval_acc']:.2f}% at epoch {n['best_epoch']} of {n['last_epoch']}"),
            ("decline since the peak", f"{n['decline']:.2f} points (best minus the mean of up to 3 epochs after it)"),
            (
                "last 3 epochs",
                f"{split} accuracy {n['recent_gain']:+.2f} points, training loss {100 * n['loss_change']:+.1f}%"
                f" ({'still falling' if n['loss_still_falling'] else 'flat'})",
            ),
        ]
        lines.append("numbers:")
        lines += [f"  {label:<26}{value}" for label, value in numbers]
        lines.append("remedies, most promising first:")
        lines += [f"  {k}. {remedy}" for k, remedy in enumerate(self.remedies, start=1)]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def curve_numbers(rows: list[dict]) -> dict:
    """What the verdict is read from: final, best and recent accuracies, the gap, the decline since the
    peak, the recent trend of loss and accuracy, and whether the schedule has annealed."""
    split = "val" if "val_acc" in rows[0] else "test"
    held_out = [r[f"{split}_acc"] for r in rows]
    losses = [r["train_loss"] for r in rows]
    best_index = max(range(len(held_out)), key=held_out.__getitem__)
    after_peak = held_out[max(best_index + 1, len(held_out) - 3) :]  # a smoothed "now", only from after the peak
    earlier = max(0, len(rows) - 4)
    numbers = {
        "split": split,
        "final_train_acc": rows[-1]["train_acc"],
        "final_eval_acc": held_out[-1],
        "gap": rows[-1]["train_acc"] - held_out[-1],
        "best_eval_acc": held_out[best_index],
        "best_epoch": rows[best_index]["epoch"],
        "last_epoch": rows[-1]["epoch"],
        "decline": held_out[best_index] - sum(after_peak) / len(after_peak) if after_peak else 0.0,
        "recent_gain": held_out[-1] - held_out[earlier],
        "loss_change": (losses[-1] - losses[earlier]) / losses[earlier] if losses[earlier] else 0.0,
    }
    numbers["loss_still_falling"] = -numbers["loss_change"] >= LOSS_FALLING
    # A schedule that has annealed (cosine near zero) makes the last epochs climb by itself: some of that is
    # the schedule finishing, not training cut short, so an annealed run must climb more to count as unfinished.
    rates = [r["lr"] for r in rows if "lr" in r]
    numbers["schedule_annealed"] = bool(rates) and rates[-1] <= ANNEALED * max(rates)
    if numbers["schedule_annealed"]:
        numbers["still_improving"] = numbers["recent_gain"] >= STILL_RISING_ANNEALED
    else:
        numbers["still_improving"] = numbers["recent_gain"] >= STILL_RISING or numbers["loss_still_falling"]
    return numbers


def diagnose_rows(rows: list[dict]) -> Diagnosis:
    """The verdict from metric rows (dicts with epoch, train_loss, train_acc and val_acc or test_acc)."""
    numbers = curve_numbers(rows)
    split, still_improving = numbers["split"], numbers["still_improving"]
    peaked_early = numbers["best_epoch"] <= numbers["last_epoch"] - 2
    reasons, notes = [], []

    if numbers["decline"] >= DECLINE and peaked_early:
        verdict = "overfitting"
        reasons.append(
            f"{split} accuracy peaked at epoch {numbers['best_epoch']} ({numbers['best_eval_acc']:.2f}%) and has "
            f"since declined by {numbers['decline']:.2f} points while training went on"
        )
        if numbers["gap"] >= WIDE_GAP:
            reasons.append(f"training accuracy is {numbers['gap']:.1f} points above {split} accuracy")
        remedies = ["early_stopping", "augmentation", "weight_decay", "dropout", "smaller"]
    elif numbers["gap"] >= WIDE_GAP:
        verdict = "overfitting"
        reasons.append(
            f"training accuracy ({numbers['final_train_acc']:.1f}%) is {numbers['gap']:.1f} points above "
            f"{split} accuracy ({numbers['final_eval_acc']:.1f}%): the network memorises the training set"
        )
        remedies = ["augmentation", "weight_decay", "dropout", "early_stopping", "smaller"]
    elif numbers["gap"] < SMALL_GAP and (numbers["final_train_acc"] < LOW_TRAIN_ACC or still_improving):
        verdict = "underfitting"
        if numbers["final_train_acc"] < LOW_TRAIN_ACC:
            reasons.append(
                f"training accuracy is only {numbers['final_train_acc']:.1f}% and {split} accuracy is close to it "
                f"(gap {numbers['gap']:+.1f} points): the model has not fit the training set"
            )
        if still_improving:
            annealed = ", more than the annealing schedule alone explains" if numbers["schedule_annealed"] else ""
            reasons.append(
                f"the curves were still improving when training stopped ({split} {numbers['recent_gain']:+.2f} points, "
                f"training loss {100 * numbers['loss_change']:+.1f}% over the last 3 epochs{annealed})"
            )
        remedies = ["longer", "larger", "less_regularization", "higher_lr"]
        if numbers["final_train_acc"] < LOW_TRAIN_ACC and not numbers["loss_still_falling"]:
            remedies = ["larger", "less_regularization", "higher_lr", "longer"]  # flat and low: capacity, not time
    else:
        verdict = "good fit"
        settled = (
            "no longer climbing"
            if numbers["recent_gain"] < STILL_RISING
            else f"its last climb ({numbers['recent_gain']:+.2f} points) came as the learning rate annealed"
        )
        reasons.append(
            f"{split} accuracy is {numbers['final_eval_acc']:.2f}%, {numbers['gap']:+.1f} points from training, "
            f"within {numbers['decline']:.2f} points of its best, and {settled}"
        )
        remedies = ["nothing", "longer"]
    if split == "test":
        notes.append(
            "no validation split: the held-out curve is the test set, so picking epochs or recipes by it is "
            "optimistic; train with --val-split 5000 for an honest one"
        )
    if len(rows) < 4:
        notes.append(f"only {len(rows)} epochs: trends over 3 epochs are rough")
    return Diagnosis(verdict, reasons, numbers, [REMEDIES[k] for k in remedies], notes)


def diagnose(run: RunRecord) -> Diagnosis:
    return diagnose_rows(run.rows)
