"""Start a model from saved weights: a cnnlab checkpoint or any state dict, loaded safely.

The classifier head may differ (another dataset's classes): it is left freshly initialised and
reported. Any other difference (a missing layer, an extra one, another shape) is an error that
names it, because silently training half-loaded weights wastes a run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import CnnlabError
from .models import head


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    from .runfiles import load_tensors
    from .runs import CHECKPOINT_FORMAT

    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"weights {path}: no such file", parameters=("weights",))
    payload = load_tensors(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        payload = payload["state_dict"]
    elif isinstance(payload, dict) and isinstance(payload.get("state_dict") or payload.get("model"), dict):
        payload = payload.get("state_dict") or payload.get("model")
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CnnlabError(
            f"weights {path} holds no state dict (a mapping of names to tensors); save one with "
            "torch.save(model.state_dict(), path)",
            parameters=("weights",),
        )
    prefix = "module."  # weights saved from DistributedDataParallel or torch.compile wrappers
    return {k[len(prefix) :] if k.startswith(prefix) else k.replace("_orig_mod.", ""): v for k, v in payload.items()}


def load_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load `path` into `model`; return notes on what was not loaded (the replaced head)."""
    given = read_state_dict(path)
    own = model.state_dict()
    head_name, _ = head(model)
    in_head = lambda key: key.startswith(head_name + ".")
    missing = [k for k in own if k not in given and not in_head(k)]
    unexpected = [k for k in given if k not in own]
    head_keys_given = [k for k in unexpected if k.rsplit(".", 1)[-1] in ("weight", "bias")]
    # A differently named head in the source (torchvision's "fc" against our "classifier") is the same
    # situation as a head of another size: it is what fine-tuning replaces. Anything else is a mismatch.
    if missing or len(unexpected) > 2 or (unexpected and len(head_keys_given) != len(unexpected)):
        listing = ", ".join((missing + unexpected)[:4])
        raise CnnlabError(
            f"weights {path} does not fit this model: {len(missing)} layers missing and {len(unexpected)} "
            f"unexpected ({listing}); use weights of the same architecture",
            parameters=("weights",),
        )
    wrong = [k for k in own if k in given and given[k].shape != own[k].shape and not in_head(k)]
    if wrong:
        k = wrong[0]
        raise CnnlabError(
            f"weights {path}: {k} has shape {tuple(given[k].shape)} there and {tuple(own[k].shape)} here; "
            "use weights of the same architecture and width",
            parameters=("weights",),
        )
    replaced = [k for k in own if in_head(k) and (k not in given or given[k].shape != own[k].shape)]
    model.load_state_dict({k: v for k, v in given.items() if k in own and k not in replaced}, strict=False)
    notes = [f"loaded {len(own) - len(replaced)} of {len(own)} tensors from {path}"]
    if replaced:
        notes.append(
            f"the head ({head_name}) was replaced for {model.state_dict()[replaced[0]].shape[0]} classes "
            "and starts from random weights"
        )
    return notes


def parameter_groups(model: nn.Module, lr: float, backbone_lr: float, freeze_backbone: bool) -> list[dict]:
    """Optimizer groups: the head at `lr`; the backbone at `backbone_lr` (scaled along the schedule), or frozen."""
    head_name, _ = head(model)
    head_params, backbone_params = [], []
    for name, p in model.named_parameters():
        (head_params if name.startswith(head_name + ".") else backbone_params).append(p)
    if freeze_backbone:
        for p in backbone_params:
            p.requires_grad_(False)
        return [{"params": head_params, "lr_scale": 1.0}]
    if backbone_lr:
        return [{"params": backbone_params, "lr_scale": backbone_lr / lr}, {"params": head_params, "lr_scale": 1.0}]
    return [{"params": list(model.parameters()), "lr_scale": 1.0}]
