"""torch.compile is a recipe field; on the CPU its compile time (about a minute here) makes it slow."""

import pytest
import torch

from cnnlab.recipe import load_recipe
from cnnlab.train import train
from test_train import TIMING, synthetic_dataset


@pytest.mark.slow
def test_compiled_training_matches_eager_and_checkpoints_plain_keys(tmp_path):
    recipe = lambda mode: load_recipe("seed", {"epochs": 1, "batch_size": 40, "compile": mode})
    eager = train(recipe("off"), synthetic_dataset(), runs_dir=None, progress=False)
    compiled = train(recipe("default"), synthetic_dataset(), runs_dir=tmp_path, name="c", progress=False)
    a, b = eager.rows[0], compiled.rows[0]
    for key in set(a) - TIMING:
        assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-3), key
    state = torch.load(tmp_path / "c" / "last.pt", weights_only=True)["state_dict"]
    assert not any(k.startswith("_orig_mod") for k in state)
