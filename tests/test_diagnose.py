"""The fit diagnosis on curves constructed to show each case of the chapter's Figure 19.5.2."""

from __future__ import annotations

import math

import pytest

from cnnlab.diagnose import REMEDIES, diagnose_rows
from cnnlab.remedies import RunFacts


def curves(train_acc, held_out, loss=None, split="val", lr=None):
    """Metric rows from per-epoch lists; training loss falls like 1/epoch and the rate is constant unless given."""
    loss = loss or [2.0 / (1 + e) for e in range(len(train_acc))]
    lr = lr or [0.1] * len(train_acc)
    return [
        {"epoch": e + 1, "train_acc": t, f"{split}_acc": v, "train_loss": l, "lr": r}
        for e, (t, v, l, r) in enumerate(zip(train_acc, held_out, loss, lr))
    ]


def cosine(n, peak=0.1):
    return [0.5 * peak * (1 + math.cos(math.pi * e / n)) for e in range(n)]


def rising(start, end, n, power=0.5):
    return [start + (end - start) * ((e + 1) / n) ** power for e in range(n)]


# The last epochs of the real 30-epoch seed run (BENCHMARKS.md, fp32, seed 0): test accuracy still climbs
# 0.8 points and the loss 10% as the cosine rate anneals to zero. That is the schedule finishing.
REAL_SEED_RUN_TAIL = {  # epoch: (train loss, train acc, test acc)
    25: (0.378, 86.92, 83.44),
    26: (0.355, 87.74, 83.79),
    27: (0.342, 88.28, 84.08),
    28: (0.323, 89.03, 84.64),
    29: (0.315, 89.29, 85.02),
    30: (0.308, 89.48, 84.88),
}


def test_the_real_seed_run_is_a_good_fit_although_its_last_epochs_climb():
    lr = cosine(30)[24:]
    rows = [
        {"epoch": e, "train_loss": l, "train_acc": t, "test_acc": v, "lr": r}
        for (e, (l, t, v)), r in zip(REAL_SEED_RUN_TAIL.items(), lr)
    ]
    d = diagnose_rows(rows)
    assert d.verdict == "good fit", d.format()
    assert d.numbers["schedule_annealed"] and d.numbers["loss_still_falling"]
    assert d.remedies[0] == REMEDIES["nothing"]


def test_a_short_cosine_run_still_climbing_steeply_is_still_improving():
    # The real 15-epoch seed run (cnnlab ablate bn, with-bn): +3.3 points over its last 3 epochs.
    test = [74.32, 75.25, 77.18, 79.89, 79.37, 81.5, 82.47, 82.70]
    train = [t + 3 for t in test]
    d = diagnose_rows(curves(train, test, lr=cosine(15)[7:], split="test"))
    assert d.numbers["schedule_annealed"]
    assert d.verdict == "still improving" and d.remedies[0] == REMEDIES["longer"], d.format()


def test_the_same_climb_at_a_high_learning_rate_is_still_improving():
    train = rising(45, 80, 12)
    val = [t - 1.5 for t in train]
    d = diagnose_rows(curves(train, val, lr=[0.1] * 12))
    assert d.verdict == "still improving", d.format()
    assert not d.numbers["schedule_annealed"]


def test_peak_then_decline_is_overfitting_and_early_stopping_comes_first():
    # Exercise 19.5.1: training accuracy 99%, test 78%, the test curve peaked at epoch 20 and declined.
    train = rising(50, 99, 30, power=0.3)
    test = [60 + e for e in range(20)] + [79 - 0.3 * (e + 1) for e in range(10)]
    test[-1] = 78.0
    d = diagnose_rows(curves(train, test, split="test"))
    assert d.verdict == "overfitting"
    assert d.numbers["best_epoch"] == 20 and d.numbers["decline"] > 1.0
    assert d.numbers["gap"] == pytest.approx(21.0)
    assert d.remedies[0] == REMEDIES["early_stopping"]
    assert any("declined" in r for r in d.reasons) and any("above" in r for r in d.reasons)
    assert any("test set" in n for n in d.notes)  # no validation split: said out loud


def test_wide_gap_without_decline_is_overfitting_with_augmentation_first():
    train = rising(60, 99.5, 20)
    val = rising(55, 80, 20, power=0.1)  # a plateau: well under a point gained over the last 3 epochs
    d = diagnose_rows(curves(train, val))
    assert d.verdict == "overfitting" and d.numbers["gap"] > 10
    assert d.remedies[0] == REMEDIES["augmentation"]
    assert not d.notes


def test_low_close_curves_still_rising_are_still_improving_and_longer_training_comes_first():
    train = rising(30, 62, 8, power=1.0)
    val = [t + 1 for t in train]
    d = diagnose_rows(curves(train, val))
    assert d.verdict == "still improving"
    assert d.remedies[0] == REMEDIES["longer"]
    assert d.numbers["recent_gain"] > 1 and d.numbers["loss_still_falling"]


def test_low_flat_curves_point_to_capacity_first():
    train = [40, 48, 50, 50.5, 50.4, 50.6, 50.5, 50.5]
    val = [41, 47, 49.5, 50, 50.2, 50.1, 50.0, 50.1]
    loss = [1.8, 1.5, 1.45, 1.44, 1.44, 1.44, 1.44, 1.44]
    d = diagnose_rows(curves(train, val, loss))
    assert d.verdict == "underfitting"
    assert d.remedies[0] == REMEDIES["larger"]


def test_noise_below_the_threshold_is_not_called_a_decline():
    train = rising(50, 89, 14) + [89.5, 89.6, 89.8, 89.9, 90.0, 90.0]
    val = rising(50, 84.6, 14) + [84.8, 85.6, 84.9, 84.7, 85.0, 84.9]  # a lucky epoch 16: noise, not memorisation
    loss = [1.5 / (1 + e) for e in range(14)] + [0.1] * 6
    d = diagnose_rows(curves(train, val, loss))
    assert d.verdict == "good fit", d.format()


def test_format_names_every_number():
    text = diagnose_rows(curves(rising(40, 90, 10), rising(40, 86, 10))).format()
    for needle in (
        "verdict:",
        "train-val gap",
        "best val accuracy",
        "decline since the peak",
        "last 3 epochs",
        "remedies",
    ):
        assert needle in text


def test_a_short_run_whose_held_out_accuracy_soars_is_still_improving_not_overfitting():
    # The practitioner's 3-epoch run: held-out accuracy rose 44 points while training accuracy ran far ahead.
    d = diagnose_rows(curves([60, 92, 99], [30, 55, 74]))
    assert d.verdict == "still improving", d.format()
    assert d.numbers["window"] == 2 and d.numbers["recent_gain"] == 44
    assert any("not yet overfitting" in note for note in d.notes) and any("only 3 epochs" in n for n in d.notes)


def test_the_thresholds_widen_to_the_sampling_error_of_a_small_held_out_split():
    # A 1.5-point dip after the peak: a real decline on 10,000 images, a swing of four images on 287.
    train = rising(50, 97, 12)
    val = rising(50, 90, 9) + [88.5, 88.4, 88.6]
    big = diagnose_rows(curves(train, val), RunFacts(held_out_images=10_000))
    small = diagnose_rows(curves(train, val), RunFacts(held_out_images=287))
    assert big.verdict == "overfitting" and small.verdict != "overfitting", (big.format(), small.format())
    assert small.numbers["thresholds"]["decline"] == pytest.approx(2 * 100 * math.sqrt(0.9 * 0.1 / 287))
    assert "on 287 images" in small.format()


def test_a_run_that_early_stopping_ended_is_never_told_to_train_longer():
    train = rising(50, 99, 12, power=0.3)
    val = [60 + 2 * e for e in range(8)] + [72, 71.5, 71.2, 71.0]
    d = diagnose_rows(curves(train, val), RunFacts(stopped_early=True))
    assert REMEDIES["longer"] not in d.remedies and REMEDIES["early_stopping"] not in d.remedies
    assert any("early stopping ended the run" in note for note in d.notes)


@pytest.mark.parametrize(
    ("train", "held_out", "split"),
    [
        ([50, 60, 70, 80, 90, 99], [40, 45, 50, 52, 53, 53.2], "test"),  # overfitting without a validation split
        ([40, 50, 60, 70, 80, 90], [39, 49, 59, 69, 79, 89], "val"),  # still improving
        ([40, 48, 50, 50.5, 50.4, 50.5], [41, 47, 49.5, 50, 50.2, 50.1], "val"),  # low and flat
        ([80, 88, 90, 90.5, 90.6, 90.6], [79, 85, 86.5, 87, 87.1, 87.0], "val"),  # good fit
    ],
)
def test_every_remedy_is_a_command_that_runs_on_the_runs_own_data(tiny_run, archive, train, held_out, split):
    import shlex

    from cnnlab.analysis import read_run
    from cnnlab.cli import build_parser
    from cnnlab.commands import _recipe
    from cnnlab.data import load_dataset
    from cnnlab.prepare import split_images

    facts = RunFacts.of(read_run(tiny_run))
    assert facts.source == str(archive) and facts.train_images == 250 and facts.held_out_images == 50
    d = diagnose_rows(curves(train, held_out, split=split), facts)
    assert d.commands and len(d.commands) == len(d.remedies), d.format()
    data = load_dataset(str(archive), progress=False)
    for command in d.commands:
        words = shlex.split(command)
        assert words[0] == "cnnlab"
        args = build_parser().parse_args(words[1:])  # every flag exists (argparse would exit 2)
        if args.command == "train":
            assert args.recipe == str(tiny_run) and args.data == str(archive)
            split_images(_recipe(args).validate(), data)  # the values fit the recipe and the data
