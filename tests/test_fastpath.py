"""Every fast path computes what the plain path computes (speed itself lives in `cnnlab bench`)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli, write_image_folder

from cnnlab.augment import random_crop_flip
from cnnlab.bench import ChapterDataset
from cnnlab.device import autocast, resolve_precision, tune_cpu_allocator
from cnnlab.flops import forward_macs, operator_shares
from cnnlab.loader import Normalizer
from cnnlab.models import build_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def fixed_batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def loss_and_grads(model, x, y, precision="fp32"):
    model.zero_grad()
    with autocast(torch.device("cpu"), precision):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach().float(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_channels_last_matches_nchw():
    torch.manual_seed(0)
    plain = build_model("smallcnn", 10).train()
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x, y = fixed_batch()
    loss_a, grad_a = loss_and_grads(plain, x, y)
    loss_b, grad_b = loss_and_grads(fast, x.contiguous(memory_format=torch.channels_last), y)
    assert torch.allclose(loss_a, loss_b, rtol=1e-5)
    assert torch.allclose(grad_a, grad_b, rtol=1e-3, atol=1e-5)


def test_bf16_autocast_loss_and_gradient_direction_match_fp32():
    torch.manual_seed(0)
    model = build_model("smallcnn", 10).train().to(memory_format=torch.channels_last)
    x, y = fixed_batch(64)
    x = x.contiguous(memory_format=torch.channels_last)
    loss32, grad32 = loss_and_grads(model, x, y, "fp32")
    loss16, grad16 = loss_and_grads(model, x, y, "bf16")
    assert abs(float(loss32) - float(loss16)) / float(loss32) < 0.02
    cosine = F.cosine_similarity(grad32, grad16, dim=0)
    assert cosine > 0.99, float(cosine)


def test_tuned_allocator_changes_nothing_numerically():
    torch.manual_seed(0)
    model = build_model("smallcnn", 10).train()
    x, y = fixed_batch()
    before = loss_and_grads(model, x, y)
    tune_cpu_allocator()
    after = loss_and_grads(model, x, y)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_batched_augmentation_has_the_chapters_statistics():
    """Per-pixel mean of many augmented draws: the batched path and the per-image chapter path differ
    by no more than two independent batched runs differ from each other (sampling noise), while a
    wrong augmentation (2-pixel padding, no flip) is told apart."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    repeats = 400
    many = images.repeat(repeats, 1, 1, 1)
    normalize = Normalizer(MEAN, STD)

    def batched(seed, padding=4, flip=True):
        out = normalize(random_crop_flip(many, padding, flip, torch.Generator().manual_seed(seed)))
        return out.view(repeats, 8, 3, 32, 32).mean(0)

    chapter = ChapterDataset(images, torch.zeros(8, dtype=torch.long), MEAN, STD)
    per_image = torch.stack([chapter[i % 8][0] for i in range(8 * repeats)]).view(repeats, 8, 3, 32, 32).mean(0)
    distance = lambda a, b: float((a - b).abs().mean())
    noise = distance(batched(1), batched(2))
    assert distance(batched(1), per_image) < 1.2 * noise
    assert distance(batched(3, padding=2, flip=False), per_image) > 2 * noise


def test_forward_macs_of_smallcnn():
    # conv: 884,736 + 2,359,296 + 4,718,592 + 2,359,296 + 4,718,592 + 2,359,296; linear 1,280
    assert forward_macs(build_model("smallcnn", 10)) == 17_401_088


def test_the_peak_model_knows_amx_avx512_bf16_and_fma_apart():
    from cnnlab.flops import compute_units, peak_unit

    amx = compute_units({"fma", "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, "GenuineIntel", 6)
    assert [u.name for u in amx] == ["FMA (2 x 512-bit)", "AVX-512 BF16", "AMX tiles"]
    assert [peak_unit(amx, p).flop_per_cycle_per_core for p in ("bf16", "fp32")] == [1024, 64]
    zen4 = compute_units({"fma", "avx2", "avx512f", "avx512_bf16"}, "AuthenticAMD", 25)
    assert [u.flop_per_cycle_per_core for u in zen4] == [32, 64]  # AVX-512 over two 256-bit pipes
    zen3 = compute_units({"fma", "avx2"}, "AuthenticAMD", 25)
    assert peak_unit(zen3, "bf16") == peak_unit(zen3, "fp32") and peak_unit(zen3, "fp32").flop_per_cycle_per_core == 32
    assert all(u.source for u in amx + zen4 + zen3)  # every figure says where it comes from


def test_the_step_profile_counts_gelu_as_activation_and_pooling_apart():
    # The speedrun network's activations are GELUs: a profile that knew only ReLU put them in
    # "everything else" (24% of a speedrun step on a Zen 4), hiding the memory-bound passes point 1 is about.
    x = torch.randn(8, 4, 16, 16, requires_grad=True)
    with torch.profiler.profile() as profiler:
        F.max_pool2d(F.gelu(F.conv2d(x, torch.randn(4, 4, 3, 3), padding=1)), 2).sum().backward()
    shares = operator_shares(profiler)
    assert shares["activation"] > 0 and shares["pooling"] > 0 and shares["convolution"] > 0
    assert sum(shares.values()) == pytest.approx(1.0)


def test_bench_runs_end_to_end(tmp_path):
    data = write_image_folder(tmp_path / "tree", n_train_per_class=100, n_test_per_class=2)
    out = tmp_path / "bench.json"
    result = run_cli(
        "bench",
        "--data",
        str(data),
        "--variants",
        "seed-literal,cnnlab",
        "--repeats",
        "1",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        str(out),
        "--profile",
    )
    assert result.returncode == 0, result.stderr
    assert "seed-literal" in result.stdout and "cnnlab" in result.stdout and "GFLOP/s" in result.stdout
    import json

    saved = json.loads(out.read_text())
    rows = saved["rows"]
    assert [r["variant"] for r in rows] == ["seed-literal", "cnnlab"] and rows[0]["speedup_vs_first"] == 1.0
    # The default path is measured as it runs on this machine: "auto" resolved, the CPU named with it.
    assert rows[1]["precision"] == resolve_precision("auto", torch.device("cpu"))
    assert saved["machine"]["cpu"]["isa"] == torch.backends.cpu.get_cpu_capability() and "cpu:" in result.stdout
    assert rows[0]["peak_unit"] in result.stdout and "FLOP per cycle per core" in result.stdout
    for row in rows:  # the profiled run: each family's share of the step, summing to the whole
        assert set(row["operator_shares"]) == {"convolution", "batch norm", "activation", "pooling", "everything else"}
        assert sum(row["operator_shares"].values()) == pytest.approx(1.0) and row["operator_shares"]["convolution"] > 0
    bad = run_cli("bench", "--variants", "warp-drive")
    assert bad.returncode == 2 and "unknown bench variant" in bad.stderr
