"""cnnlab: train convolutional networks on CIFAR-10-class image data, end to end.

import cnnlab
run = cnnlab.load_run("runs/my-run")   # the trained model, its weights named (openrun.py)
run.predict(["cat.jpg"])               # what `cnnlab predict` answers
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Importing cnnlab stays light (no torch) until the API is used.
    if name == "load_run":
        from .openrun import load_run

        return load_run
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
