"""Lookahead-style weight averaging, as the CIFAR-10 speedruns use it (Zhang et al., 2019; hlb-cifar10).

Every `every` steps the slow copy moves towards the trained ("fast") weights, and the fast weights
restart from the slow copy. The pull grows as training ends (decay 0.95^every * progress^3): early on
the slow copy simply follows, late it averages out the noise of the last high-rate steps. Batch-norm
running statistics are averaged with the weights. At the end the model takes the slow weights.
"""

from __future__ import annotations

import torch


class Lookahead:
    def __init__(self, model: torch.nn.Module, every: int):
        self.every = every
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, step: int, total_steps: int) -> None:
        """Call after optimizer step number `step` (1-based, counted over the whole run)."""
        if step % self.every:
            return
        self._sync(model, decay=0.95**self.every * (step / total_steps) ** 3)

    @torch.no_grad()
    def finish(self, model: torch.nn.Module) -> None:
        """The model takes the slow weights (the last few fast steps since the last sync are dropped)."""
        self._sync(model, decay=1.0)

    def _sync(self, model: torch.nn.Module, decay: float) -> None:
        for name, fast in model.state_dict().items():
            if name in self.slow:
                self.slow[name].lerp_(fast, 1 - decay)
                fast.copy_(self.slow[name])

    def state_dict(self) -> dict:
        return {"every": self.every, "slow": {k: v.cpu() for k, v in self.slow.items()}}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["slow"].items():
            self.slow[k].copy_(v)
