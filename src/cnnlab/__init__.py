"""cnnlab: train convolutional networks on CIFAR-10-class image data, end to end.

import cnnlab
data = cnnlab.load_dataset("photos/")  # a source, decoded once and cached (data.py)
recipe = cnnlab.load_recipe("seed", {"epochs": 5})
from cnnlab.train import train         # (a function cannot share the name of its module on the package)
result = train(recipe, data, runs_dir=None)  # nothing written to disk
run = cnnlab.load_run("runs/my-run")   # the trained model, its weights named (openrun.py)
run.predict(["cat.jpg"])               # what `cnnlab predict` answers
"""

__version__ = "0.1.0"

# name -> the module that defines it; imported on first use, so importing cnnlab stays light (no torch).
API = {"load_run": "openrun", "load_dataset": "data", "load_recipe": "recipe_files"}


def __getattr__(name: str):
    if name in API:
        import importlib

        return getattr(importlib.import_module(f".{API[name]}", __name__), name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
