"""From (recipe, dataset, cluster) to everything a run needs: which images train and which validate, the
normalisation, the model on its device, the optimizer, the loaders and the wrappers (compile, DDP, EMA,
lookahead, gradient scaling). `train` runs what this makes and `bench` times it, so a bench variant is
exactly a training configuration.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from . import distributed
from .augment import Augmentation
from .data import Dataset
from .device import resolve_device, resolve_precision, tune_cpu_allocator, warn_if_emulated
from .distributed import Cluster
from .errors import CnnlabWarning, UsageError
from .finetune import load_weights
from .imbalance import balanced_sample_weights, class_weights
from .loader import Loader, Normalizer
from .lookahead import Lookahead
from .models import build_model
from .names import shown
from .optim import make_optimizer
from .recipe import Recipe
from .splits import channel_stats, group_take, parse_count, path_groups, stratified_take
from .state import Network, Progress, TrainState

WHITENING_IMAGES = 5000  # training images whose patches set a whitening first layer


@dataclass
class Setup:
    state: TrainState  # the model, optimizer, training loader and progress (fresh)
    eval_loaders: dict[str, Loader]  # "test", and "val" when images are held out
    train_count: int
    val_count: int


def split_images(recipe: Recipe, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices trained on, indices held out for validation) of the training split: seeded, stratified by
    class, or by whole groups (val_groups, or a labels file's group column); then the train_subset of what is left."""
    labels = data.train_labels
    val_count = parse_count(recipe.val_split, len(labels), "val_split")
    given = data.given_val
    if given is not None:  # the data brings its own val/ folder: that is the validation split
        if val_count or recipe.val_groups:
            raise UsageError(
                f"{shown(data.source)} has its own val/ folder ({len(given)} images), which is the validation "
                "split; drop val_split and val_groups",
                parameters=("val_split", "val_groups"),
            )
        val_index = given
        mask = torch.ones(len(labels), dtype=torch.bool)
        mask[given] = False
        train_index = mask.nonzero().flatten()
    elif recipe.val_groups:  # whole groups (sessions, scenes) on one side: no near-twins across the split
        groups = path_groups(data.train_files, recipe.val_groups)
        val_index, train_index = group_take(groups, val_count, recipe.seed, f"val_groups {recipe.val_groups!r}")
    elif data.train_groups and val_count:  # a labels file's group column: kept whole without being asked
        val_index, train_index = group_take(data.train_groups, val_count, recipe.seed, "the labels file's groups")
    else:
        val_index, train_index = stratified_take(labels, val_count, recipe.seed)
    if recipe.early_stop and not len(val_index):  # decided here: a val/ folder in the data also counts
        raise UsageError(
            "early stopping (early_stop) watches validation accuracy: add val_split (for example 5000) "
            "or give data with a val/ folder",
            parameters=("early_stop", "val_split"),
        )
    subset_count = parse_count(recipe.train_subset, len(train_index), "train_subset")
    if subset_count:
        picked, _ = stratified_take(labels[train_index], subset_count, recipe.seed + 1)
        train_index = train_index[picked]
    return train_index, val_index


def compiled(module: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The module itself for mode "off", else its torch.compile'd form (sharing its parameters)."""
    return module if mode == "off" else torch.compile(module, mode=None if mode == "default" else mode)


def prepare(
    recipe: Recipe, data: Dataset, cluster: Cluster | None = None, *, fresh: bool = True, tune_allocator: bool = True
) -> Setup:
    """Everything `recipe` needs on `data`. `fresh` (not a resume) sets data-dependent layers and loads
    the recipe's starting weights; a resume restores its checkpoint over the result instead."""
    cluster = cluster or Cluster.single()
    device, precision = _execution(recipe, cluster, tune_allocator)
    torch.manual_seed(recipe.seed)

    train_index, val_index = split_images(recipe, data)
    # Every training image (no hold-out, no subset): the dataset's own tensor, not a 150 MB copy of it.
    everything = len(train_index) == len(data.train_labels)
    train_images = data.train_images if everything else data.train_images[train_index]
    mean, std = data.known_stats or channel_stats(train_images)
    normalize = Normalizer(mean, std)
    cl = recipe.channels_last and device.type != "mps"
    sample = (lambda: normalize(train_images[:WHITENING_IMAGES])) if fresh else None
    model, notes = _model(recipe, data, sample, device, cl)
    if recipe.color_jitter and data.grayscale and fresh:
        warnings.warn(
            "the images are grey: colour jitter acts as brightness and contrast only (saturation has nothing to "
            "change, and grey images stay grey)",
            CnnlabWarning,
            stacklevel=2,
        )
    if recipe.sync_bn and cluster.distributed:
        model = distributed.synchronize_batch_norm(model, device)  # same parameters and state-dict names

    train_loader, eval_loaders = _loaders(
        recipe, data, train_images, train_index, val_index, normalize, device, cl, cluster
    )
    state = TrainState(
        recipe,
        _network(recipe, model, device, precision, cluster),
        make_optimizer(model, recipe),
        train_loader,
        list(data.classes),
        mean,
        std,
        device,
        precision,
        cluster,
        Progress(best_metric=recipe.early_stop_metric if len(val_index) else "test_acc"),
        notes,
    )
    weights = class_weights(
        data.train_labels[train_index], data.num_classes, recipe.class_weights, recipe.class_weights_beta
    )
    state.class_weight = None if weights is None else weights.to(device)
    return Setup(state, eval_loaders, len(train_index), len(val_index))


def _execution(recipe: Recipe, cluster: Cluster, tune_allocator: bool) -> tuple[torch.device, str]:
    """The device and the numeric precision, resolved for this machine (and set up: the CPU allocator)."""
    device = resolve_device(recipe.device)
    if cluster.backend == "nccl":
        device = torch.device("cuda", cluster.local_rank)  # one GPU per process
    precision = resolve_precision(recipe.precision, device)
    if cluster.is_main:
        warn_if_emulated(precision, device)
    if device.type == "cpu" and tune_allocator:
        tune_cpu_allocator()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)  # the CLI also sets OMP_NUM_THREADS before torch starts its pools
    return device, precision


def _loaders(recipe, data, train_images, train_index, val_index, normalize, device, channels_last, cluster):
    """The training loader (augmented, this rank's slice of each batch) and the evaluation loaders."""
    train_labels = data.train_labels[train_index]
    balanced = recipe.sampler == "balanced"
    train_loader = Loader(
        train_images,
        train_labels,
        recipe.batch_size,
        normalize,
        device=device,
        augment=Augmentation.of(recipe),
        seed=recipe.seed,
        channels_last=channels_last,
        rank=cluster.rank,
        world_size=cluster.world_size,
        sample_weights=balanced_sample_weights(train_labels, data.num_classes) if balanced else None,
    )
    evaluation = lambda images, labels: Loader(
        images, labels, recipe.eval_batch_size, normalize, device=device, channels_last=channels_last
    )
    eval_loaders = {"test": evaluation(data.test_images, data.test_labels)}
    if len(val_index):
        eval_loaders["val"] = evaluation(data.train_images[val_index], data.train_labels[val_index])
    return train_loader, eval_loaders


def _model(recipe: Recipe, data: Dataset, sample, device, channels_last: bool):
    """The recipe's network on `device`: on a fresh start (`sample` given: it returns normalised training
    images), its data-dependent layers set and its starting weights loaded; with the notes loading wrote."""
    model = build_model(recipe.model, data.num_classes, **recipe.model_options)
    notes = []
    if sample is not None:
        if hasattr(model, "initialise_from_data") and not recipe.weights:
            model.initialise_from_data(sample())  # the speedrun network's whitening layer
        if recipe.weights:
            notes = load_weights(model, recipe.weights)
    model = model.to(device)
    return (model.to(memory_format=torch.channels_last) if channels_last else model), notes


def _network(recipe: Recipe, model: torch.nn.Module, device, precision: str, cluster: Cluster) -> Network:
    # The compiled module shares the model's parameters; the plain one is what checkpoints hold.
    net = Network(model, compiled(model, recipe.compile))
    if cluster.distributed:  # gradients averaged over the ranks; evaluation uses the plain model on every rank
        from torch.nn.parallel import DistributedDataParallel

        # DDP sends rank 0's buffers (batch-norm running statistics) before every forward; the loop sends
        # them once more at the end of each epoch, so every rank evaluates exactly rank 0's model.
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        net.ddp = compiled(ddp, recipe.compile)
    if recipe.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        net.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema), use_buffers=True)
    if precision == "fp16" and device.type == "cuda":
        net.scaler = torch.amp.GradScaler("cuda")
    if recipe.lookahead:
        net.lookahead = Lookahead(model, recipe.lookahead)
    return net
