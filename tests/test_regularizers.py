"""ResNet-18, fine-tuning, and the modern recipe's regularizers and schedules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_train import synthetic_dataset

from cnnlab.augment import color_jitter, cutout, mix, random_erasing
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.finetune import load_weights, parameter_groups
from cnnlab.models import build_model, count_parameters
from cnnlab.recipe_files import load_recipe, shipped_recipes
from cnnlab.runfiles import load_checkpoint
from cnnlab.schedule import learning_rate
from cnnlab.train import train


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_resnet18_for_cifar():
    model = build_model("resnet18", 10)
    assert count_parameters(model) == 11_173_962
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    stem = model.features[0][0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_torchvision_models_are_optional():
    try:
        import torchvision  # noqa: F401
    except Exception:
        with pytest.raises(UsageError, match="needs torchvision"):
            build_model("tv:resnet18", 10)
        return
    model = build_model("tv:resnet18", 7)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_cutout_hides_one_square_per_image():
    x = torch.ones(16, 3, 32, 32)
    out = cutout(x, 8, generator())
    hidden = (out == 0).all(dim=1)
    assert out.shape == x.shape and hidden.flatten(1).sum(dim=1).tolist() == [64] * 16
    assert not torch.equal(hidden[0], hidden[1])  # each image its own place


def test_random_erasing_boxes_and_probability():
    x = torch.zeros(200, 3, 32, 32)
    out = random_erasing(x, 1.0, generator())
    area = (out != 0).any(dim=1).flatten(1).float().mean(dim=1)
    assert out.shape == x.shape and (area > 0.005).all() and (area < 0.45).all()
    assert torch.equal(random_erasing(x, 0.0, generator()), x)
    some = (random_erasing(x, 0.5, generator()) != 0).flatten(1).any(dim=1).float().mean()
    assert 0.35 < float(some) < 0.65


def test_color_jitter_stays_in_range_and_zero_strength_is_identity():
    x = torch.rand(8, 3, 16, 16, generator=generator(1))
    out = color_jitter(x, 0.4, generator())
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1 and not torch.allclose(out, x)
    assert torch.allclose(color_jitter(x, 0.0, generator()), x, atol=1e-6)


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixing_keeps_label_weights_summing_to_one(mixup, cutmix):
    torch.manual_seed(3)
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    mixed, y_a, y_b, weight = mix(x, y, mixup, cutmix)
    assert mixed.shape == x.shape and 0 <= weight <= 1 and torch.equal(y_a, y)
    targets = weight * F.one_hot(y_a, 10) + (1 - weight) * F.one_hot(y_b, 10)
    assert torch.allclose(targets.sum(dim=1), torch.ones(32))
    logits = torch.randn(32, 10)
    mixed_loss = weight * F.cross_entropy(logits, y_a) + (1 - weight) * F.cross_entropy(logits, y_b)
    assert torch.allclose(mixed_loss, F.cross_entropy(logits, targets.float()), atol=1e-6)
    if cutmix and not mixup:  # CutMix: the weight is the share of pixels still from the image itself
        other = y_a != y_b  # images paired with another image (a permutation may pair one with itself)
        from_a = (mixed[other] == x[other]).all(dim=1).float().mean()
        assert abs(float(from_a) - weight) < 1e-6


def test_onecycle_and_warmup_shapes():
    recipe = load_recipe("seed", {"schedule": "onecycle", "epochs": 10})
    rates = [learning_rate(recipe, e, s, 100) for e in range(10) for s in range(100)]
    assert rates[0] == pytest.approx(0.1 / 25, rel=1e-3) and max(rates) == pytest.approx(0.1, rel=1e-3)
    assert rates.index(max(rates)) == pytest.approx(300, abs=2) and rates[-1] < 1e-4
    warm = load_recipe("seed", {"warmup_epochs": 2.0})
    ramp = [learning_rate(warm, e, s, 10) for e in range(3) for s in range(10)]
    assert ramp[0] == pytest.approx(0.1 * 1 / 20 * 1.0) and ramp[19] == pytest.approx(learning_rate(warm, 1))
    assert all(b >= a for a, b in zip(ramp[:20], ramp[1:20]))
    assert ramp[25] == pytest.approx(learning_rate(load_recipe("seed"), 2))


def test_ema_differs_from_and_lags_the_live_weights(tmp_path):
    data = synthetic_dataset()
    result = train(
        load_recipe("seed", {"epochs": 3, "batch_size": 16, "ema": 0.9, "precision": "fp32"}),
        data,
        runs_dir=tmp_path,
        name="ema",
        progress=False,
        plots=False,
    )
    live = load_checkpoint(tmp_path / "ema" / "last.pt")["state_dict"]
    averaged = load_checkpoint(tmp_path / "ema" / "ema.pt")["state_dict"]
    torch.manual_seed(0)
    initial = build_model("smallcnn", 4).state_dict()  # train() seeds the same way before building the model
    key = "features.0.0.weight"
    assert not torch.equal(live[key], averaged[key])
    assert (averaged[key] - initial[key]).norm() < (live[key] - initial[key]).norm()
    assert all("ema_test_acc" in r for r in result.rows)


def test_fine_tuning_replaces_a_head_of_another_size(tmp_path):
    train(
        load_recipe("seed", {"epochs": 1, "batch_size": 16}),
        synthetic_dataset(num_classes=4),
        runs_dir=tmp_path,
        name="src",
        progress=False,
        plots=False,
    )
    target = build_model("smallcnn", 7)
    notes = load_weights(target, tmp_path / "src" / "last.pt")
    assert "the head (classifier) was replaced for 7 classes" in notes[-1]
    trained = load_checkpoint(tmp_path / "src" / "last.pt")["state_dict"]
    assert torch.equal(target.state_dict()["features.2.0.weight"], trained["features.2.0.weight"])
    torch.save(build_model("resnet18", 4).state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(CnnlabError, match="does not fit this model"):
        load_weights(build_model("smallcnn", 4), tmp_path / "resnet.pt")
    narrow = {k: v[..., :1] if v.ndim == 4 else v for k, v in trained.items()}
    torch.save(narrow, tmp_path / "narrow.pt")
    with pytest.raises(CnnlabError, match="has shape"):
        load_weights(build_model("smallcnn", 4), tmp_path / "narrow.pt")


def test_freezing_the_backbone_trains_only_the_head(tmp_path):
    train(
        load_recipe("seed", {"epochs": 1, "batch_size": 16}),
        synthetic_dataset(),
        runs_dir=tmp_path,
        name="src",
        progress=False,
        plots=False,
    )
    recipe = load_recipe(
        "seed",
        {
            "epochs": 1,
            "batch_size": 16,
            "weights": str(tmp_path / "src" / "last.pt"),
            "freeze_backbone": True,
            "precision": "fp32",
        },
    )
    result = train(recipe, synthetic_dataset(), runs_dir=None, progress=False)
    before = load_checkpoint(tmp_path / "src" / "last.pt")["state_dict"]
    after = result.model.state_dict()
    assert torch.equal(after["features.0.0.weight"], before["features.0.0.weight"])
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])
    groups = parameter_groups(build_model("smallcnn", 4), 0.1, 0.01, False)
    assert [g["lr_scale"] for g in groups] == [pytest.approx(0.1), 1.0]


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_runs_briefly(name):
    recipe = load_recipe(name, {"epochs": 1, "batch_size": 16, "warmup_epochs": 0.0, "eval_batch_size": 64})
    result = train(recipe, synthetic_dataset(n_train=8, n_test=4), runs_dir=None, progress=False)
    assert len(result.rows) == 1 and math.isfinite(result.rows[0]["train_loss"])


def test_every_regularizer_together_runs(tmp_path):
    overrides = {
        "epochs": 2,
        "batch_size": 16,
        "cutout": 8,
        "random_erasing": 0.5,
        "color_jitter": 0.3,
        "mixup": 0.2,
        "cutmix": 1.0,
        "ema": 0.99,
        "warmup_epochs": 0.5,
        "schedule": "onecycle",
        "nesterov": True,
        "label_smoothing": 0.1,
    }
    result = train(load_recipe("seed", overrides), synthetic_dataset(), runs_dir=None, progress=False)
    assert all(math.isfinite(r["train_loss"]) for r in result.rows)
