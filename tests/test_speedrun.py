"""The speedrun pieces each do what they claim: whitening whitens, reflect translation reflects,
alternating flips alternate, lookahead averages, the schedule and the optimizer groups are as stated."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from cnnlab.augment import Augmentation, random_crop_flip
from cnnlab.errors import CnnlabWarning, UsageError
from cnnlab.loader import Loader, Normalizer
from cnnlab.lookahead import Lookahead
from cnnlab.models import build_model
from cnnlab.optim import make_optimizer
from cnnlab.recipe_files import load_recipe
from cnnlab.schedule import learning_rate


def correlated_images(n=200, size=16, seed=0):
    """Smooth, colour-correlated images: neighbouring pixels and channels far from independent."""
    g = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.randn(n, 1, size + 3, size + 3, generator=g), 4, stride=1)
    return torch.cat([base, 0.8 * base + 0.2 * torch.randn(n, 1, size, size, generator=g), -base], dim=1)


def test_whitening_layer_decorrelates_the_patches_it_was_fitted_on():
    model = build_model("speedrun-small", 10)
    images = correlated_images()
    model.initialise_from_data(images)
    with torch.no_grad():
        out = F.conv2d(images, model.whiten.weight[:12])  # the 12 positive filters (the rest are their negatives)
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    covariance = torch.cov(flat)
    raw = torch.cov(images.unfold(2, 2, 1).unfold(3, 2, 1).permute(1, 4, 5, 0, 2, 3).reshape(12, -1))
    off_diagonal = lambda c: (c - torch.diag(torch.diag(c))).abs().max() / torch.diag(c).max()
    assert off_diagonal(raw) > 0.5  # the input patches are strongly correlated...
    assert off_diagonal(covariance) < 1e-3  # ...and the whitened ones are not
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad


def test_switched_off_whitening_leaves_a_trainable_random_first_layer():
    model = build_model("speedrun-small", 10, whiten=False)
    before = model.whiten.weight.clone()
    model.initialise_from_data(correlated_images())
    assert torch.equal(model.whiten.weight, before) and model.whiten.weight.requires_grad


def test_identity_init_passes_the_input_through_the_first_convolution():
    model = build_model("speedrun-small", 10)
    x = torch.randn(2, 24, 8, 8)
    conv = model.stages[0].conv1
    assert torch.allclose(conv(x)[:, :24], x, atol=1e-6)
    assert not torch.allclose(build_model("speedrun-small", 10, identity_init=False).stages[0].conv1(x)[:, :24], x)


def test_a_gelu_after_the_whitening_layer_keeps_both_halves_of_each_filter_pair():
    with_gelu, without = build_model("speedrun-small", 10), build_model("speedrun-small", 10, whiten_gelu=False)
    without.load_state_dict(with_gelu.state_dict())  # the switch has no weights: old checkpoints still load
    with_gelu.initialise_from_data(correlated_images())
    x = correlated_images(4, seed=1)
    whitened = with_gelu.whiten(x)
    assert torch.equal(with_gelu.whiten_activation(whitened), F.gelu(whitened))
    assert torch.equal(without.whiten_activation(whitened), whitened)
    # Without the GELU the 24 channels are 12 features and their negatives (up to the bias): no new information.
    pair = whitened[:, :12] - with_gelu.whiten.bias[:12, None, None]
    assert torch.allclose(pair, -(whitened[:, 12:] - with_gelu.whiten.bias[12:, None, None]), atol=1e-5)
    active = with_gelu.whiten_activation(whitened)
    assert not torch.allclose(active[:, :12], -active[:, 12:], atol=1e-2)


def test_a_run_saved_before_the_whitening_gelu_rebuilds_resumes_and_repeats_without_it(archive, tmp_path):
    """A checkpoint whose recipe predates `whiten_gelu` was trained without the GELU: every way back into the
    run (evaluate and export through model_from_checkpoint, resume, load_run, --recipe RUN) must say so."""
    from cnnlab.data import load_dataset
    from cnnlab.openrun import load_run
    from cnnlab.recipe_files import as_the_run_trained
    from cnnlab.runfiles import load_checkpoint, model_from_checkpoint
    from cnnlab.train import train

    data = load_dataset(str(archive), cache_dir=tmp_path / "cache", progress=False)
    with pytest.warns(CnnlabWarning, match="scale with it"):
        recipe = load_recipe("speedrun-cpu", {"epochs": 1, "batch_size": 64, "precision": "fp32", "tta": False})
    assert recipe.model_options["whiten_gelu"] is True
    run = train(recipe, data, runs_dir=tmp_path, name="run", progress=False).run_dir
    assert isinstance(model_from_checkpoint(load_checkpoint(run / "last.pt")).whiten_activation, torch.nn.GELU)

    for name in ("last.pt", "best.pt"):  # as an older cnnlab wrote them: no whiten_gelu in the saved options
        payload = torch.load(run / name, weights_only=False)
        del payload["recipe"]["model_options"]["whiten_gelu"]
        torch.save(payload, run / name)
    config = json.loads((run / "config.json").read_text())
    del config["recipe"]["model_options"]["whiten_gelu"]
    (run / "config.json").write_text(json.dumps(config))

    old = model_from_checkpoint(load_checkpoint(run / "last.pt"))
    assert isinstance(old.whiten_activation, torch.nn.Identity)
    assert load_run(run).recipe.model_options["whiten_gelu"] is False
    assert load_recipe(str(run)).model_options["whiten_gelu"] is False  # --recipe RUN repeats what it trained
    assert as_the_run_trained(payload["recipe"])["model_options"] == {
        "whiten": True,
        "identity_init": True,
        "whiten_gelu": False,
    }
    # A switch the saved run does record is kept, and a model without options gets none.
    assert as_the_run_trained({"model": "speedrun", "model_options": {"whiten_gelu": True}})["model_options"] == {
        "whiten_gelu": True
    }
    assert as_the_run_trained({"model": "smallcnn", "model_options": {}})["model_options"] == {}


@pytest.mark.parametrize("size", [31, 15, 181, 200])  # the network's planes; the largest plane int16 holds; one past it
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_pool_with_16_bit_positions_gives_the_same_output_and_gradient(size, layout, dtype):
    from cnnlab.models.speedrun import max_pool_2x2

    g = torch.Generator().manual_seed(size)
    # Rounded values tie within many windows, so the gradient also checks which of the tied maxima was kept.
    x = torch.randn(2, 3, size, size, generator=g).mul(2).round().to(dtype).contiguous(memory_format=layout)
    grad_out = torch.randn(2, 3, size // 2, size // 2, generator=g).to(dtype)
    plain, narrow = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = F.max_pool2d(plain, 2), max_pool_2x2(narrow)
    expected.backward(grad_out)
    got.backward(grad_out)
    assert torch.equal(got, expected) and torch.equal(narrow.grad, plain.grad)


def test_a_stage_keeps_neither_its_pool_input_nor_its_batch_norms_inputs_nor_64_bit_positions():
    from cnnlab.models.speedrun import ConvStage

    stage = ConvStage(3, 8).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 31, 31).contiguous(memory_format=torch.channels_last).requires_grad_()
    norm_inputs = []  # the pooled first convolution's output and the second convolution's output
    for norm in (stage.norm1, stage.norm2):
        norm.register_forward_pre_hook(lambda module, args: norm_inputs.append(args[0]))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        stage(x).sum().backward()
    shapes = {(t.dtype, tuple(t.shape)) for t in saved}
    assert (torch.int16, (2, 8, 15, 15)) in shapes  # the positions, and nothing at the pool's input size:
    assert not any(shape == (2, 8, 31, 31) or dtype == torch.int64 for dtype, shape in shapes)
    kept = {t.data_ptr() for t in saved}
    assert len(norm_inputs) == 2 and not any(t.data_ptr() in kept for t in norm_inputs)
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_batch_norm_that_keeps_its_output_matches_pytorchs(layout, precision):
    # The forward pass and the running statistics are PyTorch's own, bit for bit. The gradient differs by
    # rounding only: in fp32 within float32's precision; in bf16 (autocast, as training runs) no further from a
    # float64 reference than PyTorch's own bf16 batch norm is.
    import copy

    from cnnlab.device import autocast
    from cnnlab.models.speedrun import FrozenScaleBatchNorm

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False)
    norm = FrozenScaleBatchNorm(16)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(64, 8, 15, 15).contiguous(memory_format=layout)
    weights = torch.randn(64, 16, 15, 15)  # makes the loss's gradient vary from element to element

    def run(saves_output: bool, dtype: torch.dtype, precision: str):
        c, n = copy.deepcopy(conv).to(dtype), copy.deepcopy(norm).to(dtype)
        n.saves_output = saves_output
        with autocast(torch.device("cpu"), precision):
            y = F.gelu(n(c(x.to(dtype))))
        (y.to(dtype) * weights.to(dtype)).sum().backward()
        return y, n, (c.weight.grad.double(), n.bias.grad.double())

    y, norm_kept, grads = run(True, torch.float32, precision)
    y_ref, norm_ref, grads_ref = run(False, torch.float32, precision)
    assert y.dtype == y_ref.dtype and torch.equal(y, y_ref)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(norm_kept, name), getattr(norm_ref, name))
    if precision == "fp32":
        for got, expected in zip(grads, grads_ref):
            assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    else:
        _, _, truth = run(False, torch.float64, "fp32")
        for got, pytorchs, exact in zip(grads, grads_ref, truth):
            assert (got - exact).norm() <= 1.1 * (pytorchs - exact).norm() + 1e-6 * exact.norm()


def test_the_batch_norm_that_keeps_its_output_gives_the_inputs_gradient_with_its_shift_frozen():
    # A frozen shift (fine-tuning part of a network): the backward kernel is asked for the input's gradient only.
    from cnnlab.models.speedrun import FrozenScaleBatchNorm

    kept, plain = FrozenScaleBatchNorm(4), FrozenScaleBatchNorm(4)
    plain.saves_output = False
    x = torch.randn(8, 4, 5, 5)
    grads = []
    for norm in (kept, plain):
        norm.bias.requires_grad_(False)
        inputs = x.clone().requires_grad_()
        out = norm(inputs)
        assert ("ShiftOnly" in type(out.grad_fn).__name__) == norm.saves_output
        F.gelu(out).pow(2).sum().backward()
        assert norm.bias.grad is None
        grads.append(inputs.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_the_network_traces_for_export_with_autograd_on():
    # torch.jit.trace (TorchScript and ONNX export) keeps autograd on; a Python autograd function in the graph
    # would fail the trace's own check, so the exports take PyTorch's pool.
    model = build_model("speedrun-8-16-16", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    traced = torch.jit.trace(model, (x,))
    assert torch.allclose(traced(x), model(x))


def test_frozen_batch_norm_scales_do_not_train():
    model = build_model("speedrun", 10)
    scales = [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert scales and all(not w.requires_grad and torch.all(w == 1) for w in scales)


def test_reflect_translation_equals_cropping_a_reflect_padded_image():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, 2, False, torch.Generator().manual_seed(3), reflect=True)
    offsets = torch.randint(0, 5, (64, 2), generator=torch.Generator().manual_seed(3))  # the same draw
    padded = F.pad(images.float(), (2, 2, 2, 2), mode="reflect")
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(out[i].float(), padded[i, :, dy : dy + 8, dx : dx + 8])
    assert len({tuple(o) for o in offsets.tolist()}) > 10  # and the offsets really vary


def test_alternating_flip_mirrors_every_image_in_exactly_one_of_two_epochs():
    images = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8)
    identity = Normalizer((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
    loader = Loader(
        images, torch.arange(100), 32, identity, device="cpu", augment=Augmentation(flip=True, alternate_flip=True)
    )

    def mirrored_per_image():
        flags = {}
        for x, y in loader:
            for img, label in zip(x, y.tolist()):
                flags[label] = torch.equal(img, images[label].float().flip(-1))
        return flags

    first, second, third = mirrored_per_image(), mirrored_per_image(), mirrored_per_image()
    assert 30 < sum(first.values()) < 70  # a random half
    assert all(first[i] != second[i] for i in range(100))  # the other half next epoch
    assert first == third


def test_lookahead_moves_the_slow_weights_by_the_stated_decay_and_restarts_the_fast_ones():
    model = torch.nn.Linear(3, 2)
    lookahead = Lookahead(model, every=5)
    slow = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    fast = model.weight.detach().clone()
    lookahead.after_step(model, 4, 10)  # not a sync step
    assert torch.equal(model.weight, fast)
    lookahead.after_step(model, 5, 10)
    decay = 0.95**5 * 0.5**3
    assert torch.allclose(model.weight, decay * slow + (1 - decay) * fast)
    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead.finish(model)  # the model takes the slow weights, ignoring the steps since the last sync
    assert torch.allclose(model.weight, decay * slow + (1 - decay) * fast)


def test_linear_schedule_rises_over_the_warm_up_then_falls_to_zero():
    recipe = load_recipe("speedrun")
    steps = 49
    rates = [learning_rate(recipe, e, s, steps) for e in range(recipe.epochs) for s in range(steps)]
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(recipe.lr)
    assert peak == math.ceil(recipe.warmup_epochs * steps) - 1
    assert all(a < b for a, b in zip(rates[:peak], rates[1 : peak + 1]))
    assert all(a > b for a, b in zip(rates[peak:], rates[peak + 1 :]))
    assert 0 < rates[-1] < recipe.lr / 100


def test_linear_schedule_can_start_and_end_where_airbench_does():
    recipe = load_recipe("speedrun", {"lr_start_fraction": 0.2, "lr_end_fraction": 0.07})
    steps = 49
    total, warm = recipe.epochs * steps, recipe.warmup_epochs * steps
    rates = [learning_rate(recipe, e, s, steps) / recipe.lr for e in range(recipe.epochs) for s in range(steps)]

    def airbench94(n):  # its get_lr: 0.2 up to 1 over the warm-up, then down to 0.07 at the end
        if n < warm:
            return 0.2 * (1 - n / warm) + n / warm
        return 1.0 * (1 - (n - warm) / (total - warm)) + 0.07 * (n - warm) / (total - warm)

    for n, rate in enumerate(rates):  # the warm-up runs one step ahead of airbench's, as cnnlab's always did
        assert rate == pytest.approx(airbench94(n), abs=0.8 / warm + 1e-12), n
    assert rates[0] > 0.2 and max(rates) == pytest.approx(1.0) and rates[-1] == pytest.approx(airbench94(total - 1))
    with pytest.raises(UsageError, match="shape the linear schedule, not cosine"):
        load_recipe("seed", {"lr_end_fraction": 0.07})


def test_decoupled_weight_decay_shrinks_every_group_alike_and_biases_train_faster():
    recipe = load_recipe("speedrun")
    model = build_model(recipe.model, 10)
    optimizer = make_optimizer(model, recipe)
    groups = {g["lr_scale"]: g for g in optimizer.param_groups}
    assert set(groups) == {1.0, recipe.bias_lr_scale}
    for g in optimizer.param_groups:
        assert g["lr"] * g["weight_decay"] == pytest.approx(recipe.weight_decay)
    named = dict(model.named_parameters())
    bias_ids = {id(p) for n, p in named.items() if n.endswith("bias") and p.requires_grad}
    assert {id(p) for p in groups[recipe.bias_lr_scale]["params"]} == bias_ids
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable


def test_the_speedrun_recipe_trains_end_to_end_and_reports_tta(archive, tmp_path):
    from cnnlab.train import train

    recipe = load_recipe("speedrun-cpu", {"epochs": 3, "batch_size": 32, "warmup_epochs": 1.0, "precision": "fp32"})
    result = train(recipe, str(archive), data_root=tmp_path, runs_dir=tmp_path / "runs", progress=False, plots=False)
    assert len(result.rows) == 3 and "tta_test_acc" in result.rows[-1] and "tta_test_acc" not in result.rows[0]
    assert result.summary["final_tta_test_acc"] == result.rows[-1]["tta_test_acc"]
    assert result.rows[-1]["train_loss"] < result.rows[0]["train_loss"]


def test_tta_precision_auto_judges_the_views_in_the_training_precision(archive, tmp_path):
    from cnnlab.data import load_dataset
    from cnnlab.device import autocast
    from cnnlab.evaluate import evaluate
    from cnnlab.splits import channel_stats
    from cnnlab.train import train

    data = load_dataset(str(archive), cache_dir=tmp_path, progress=False)
    # Few images: on a CPU without native bf16 every bf16 step is emulated (about 11x slower than fp32).
    data = dataclasses.replace(
        data,
        train_images=data.train_images[:64],
        train_labels=data.train_labels[:64],
        test_images=data.test_images[:40],
        test_labels=data.test_labels[:40],
    )
    options = {"epochs": 2, "batch_size": 32, "warmup_epochs": 1.0, "precision": "bf16", "seed": 1}
    runs = {
        mode: train(
            load_recipe("speedrun-cpu", {**options, "tta_precision": mode}), data, runs_dir=None, progress=False
        )
        for mode in ("auto", "fp32")
    }
    assert runs["auto"].rows[-1]["train_loss"] == runs["fp32"].rows[-1]["train_loss"]  # the same model
    assert runs["auto"].rows[-1]["test_loss"] == runs["fp32"].rows[-1]["test_loss"]  # the plain result stays float32
    assert runs["auto"].rows[-1]["tta_test_loss"] != runs["fp32"].rows[-1]["tta_test_loss"]
    loader = Loader(
        data.test_images,
        data.test_labels,
        2000,
        Normalizer(*channel_stats(data.train_images)),
        device=torch.device("cpu"),
        channels_last=True,
    )
    for mode, precision in (("auto", "bf16"), ("fp32", "fp32")):
        plain = evaluate(runs[mode].model, loader)  # the last row's float32 pass, whose logits the unmoved view takes
        with autocast(torch.device("cpu"), precision):
            expected = evaluate(runs[mode].model, loader, True, load_recipe("speedrun-cpu").tta_views, plain)
        assert runs[mode].rows[-1]["tta_test_loss"] == pytest.approx(expected["loss"], rel=1e-6)
        assert runs[mode].rows[-1]["tta_test_acc"] == expected["acc"]


def test_the_speedrun_ablation_switches_off_one_technique_per_variant():
    from cnnlab.ablate import ABLATIONS, variant_recipes

    ablation = ABLATIONS["speedrun"]
    base = load_recipe(ablation.recipe)
    with pytest.warns(CnnlabWarning, match="warmup_epochs 3.5"):  # 8 epochs of a 15-epoch recipe: scaled
        recipes = variant_recipes(ablation, base)
    reference = recipes[next(iter(recipes))].to_dict()
    for variant, recipe in list(recipes.items())[1:]:
        changed = {k for k, v in recipe.to_dict().items() if reference[k] != v} - {"name"}
        assert len(changed) == 1, (variant, changed)


def test_newton_schulz_pushes_every_singular_value_near_one():
    from cnnlab.muon import orthogonalize

    g = torch.Generator().manual_seed(0)
    # A badly conditioned matrix, wide and tall: singular values spread over three decades.
    for shape in [(32, 288), (288, 32)]:
        u, _ = torch.linalg.qr(torch.randn(max(shape), min(shape), generator=g))
        v, _ = torch.linalg.qr(torch.randn(min(shape), min(shape), generator=g))
        spectrum = torch.logspace(0, -3, min(shape))
        matrix = u @ torch.diag(spectrum) @ v.T
        matrix = matrix if shape[0] > shape[1] else matrix.T
        singular = torch.linalg.svdvals(orthogonalize(matrix).float())
        assert singular.max() < 1.25 and singular[: min(shape) // 2].min() > 0.6, singular
        # The same singular vectors: the result points the way the matrix does.
        assert F.cosine_similarity(orthogonalize(matrix).float().flatten(), matrix.flatten(), dim=0) > 0.3


def test_newton_schulz_runs_in_bf16_only_where_bf16_is_native():
    from cnnlab.device import cpu_has_native_bf16
    from cnnlab.muon import iteration_dtype, orthogonalize

    assert iteration_dtype(torch.device("cuda")) == torch.bfloat16
    assert iteration_dtype(torch.device("cpu")) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    # Either way the step keeps the gradient's dtype, and the two iterations give the same direction.
    matrix = torch.randn(64, 576, generator=torch.Generator().manual_seed(1))
    in_fp32, in_bf16 = (orthogonalize(matrix, dtype=dtype) for dtype in (torch.float32, torch.bfloat16))
    assert in_fp32.dtype == in_bf16.dtype == torch.float32
    assert F.cosine_similarity(in_fp32.flatten(), in_bf16.flatten(), dim=0) > 0.99
    for result in (in_fp32, in_bf16):
        singular = torch.linalg.svdvals(result)
        assert singular.max() < 1.25 and singular.min() > 0.6, singular


def test_muon_groups_hold_the_filters_keep_their_norm_and_the_rest_is_plain_sgd():
    recipe = load_recipe("speedrun-cpu", {"muon_lr": 0.1})
    torch.manual_seed(0)
    model = build_model(recipe.model, 10)
    optimizer = make_optimizer(model, recipe)
    muon = [g for g in optimizer.param_groups if g.get("muon_momentum") is not None]
    filters = {id(p) for p in model.parameters() if p.requires_grad and p.ndim == 4}
    assert {id(p) for g in muon for p in g["params"]} == filters and filters
    assert all(g["lr"] == pytest.approx(0.1) and g["weight_decay"] == 0 and g["momentum"] == 0 for g in muon)
    head = model.head.weight
    before = {id(p): p.detach().clone() for p in model.parameters()}
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    for group in muon:
        for p in group["params"]:
            assert not torch.equal(p, before[id(p)])
            # After a step from norm sqrt(out), the norm grows by at most the step (the update is near orthogonal).
            assert abs(p.norm() - math.sqrt(p.shape[0])) < 0.1 * math.sqrt(min(p.shape[0], p[0].numel())) + 1e-6
            assert "muon_buffer" in optimizer.state[p] and "momentum_buffer" not in optimizer.state[p]
    assert "momentum_buffer" in optimizer.state[head]  # the head took SGD steps with its momentum
    # A checkpoint of the optimizer carries Muon's buffers; loading it gives the same next step.
    clone = make_optimizer(model, recipe)
    clone.load_state_dict(optimizer.state_dict())
    assert torch.equal(
        clone.state[next(iter(muon[0]["params"]))]["muon_buffer"],
        optimizer.state[next(iter(muon[0]["params"]))]["muon_buffer"],
    )


def test_the_whitening_bias_trains_for_its_epochs_then_stays():
    from cnnlab.schedule import set_learning_rate

    recipe = load_recipe("speedrun-cpu", {"whiten_bias_epochs": 1.5})
    torch.manual_seed(0)
    model = build_model(recipe.model, 10)
    model.initialise_from_data(torch.randn(64, 3, 32, 32))
    optimizer = make_optimizer(model, recipe)
    own = [g for g in optimizer.param_groups if "trains_until_epoch" in g]
    assert len(own) == 1 and own[0]["params"] == [model.whiten.bias]
    assert own[0]["lr_scale"] == recipe.bias_lr_scale  # it keeps the rate of the biases while it trains
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def step(epochs_done):
        set_learning_rate(optimizer, 0.1, epochs_done)
        before = model.whiten.bias.detach().clone(), model.head.weight.detach().clone()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        return not torch.equal(model.whiten.bias, before[0]), not torch.equal(model.head.weight, before[1])

    assert step(1.0) == (True, True)
    assert step(1.5) == (False, True)  # from 1.5 epochs on, momentum and decay included, it does not move
    assert step(2.0) == (False, True)


def test_the_whitening_bias_can_train_at_its_own_rate_with_the_same_shrink():
    airbench = load_recipe("speedrun", {"whiten_bias_lr_scale": 1.0})
    model = build_model(airbench.model, 10)
    groups = make_optimizer(model, airbench).param_groups
    own = [g for g in groups if any(p is model.whiten.bias for p in g["params"])]
    assert len(own) == 1 and own[0]["params"] == [model.whiten.bias] and own[0]["lr_scale"] == 1.0
    assert "trains_until_epoch" not in own[0]  # its epochs are a field of their own
    for g in groups:  # every group, the bias's own included, shrinks by the same weight_decay per step
        assert g["lr"] * g["weight_decay"] == pytest.approx(airbench.weight_decay)
    shipped = make_optimizer(model, load_recipe("speedrun")).param_groups  # as the batch-norm shifts
    assert [g["lr_scale"] for g in shipped if any(p is model.whiten.bias for p in g["params"])] == [64.0]
