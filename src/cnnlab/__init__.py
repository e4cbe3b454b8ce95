"""cnnlab: train convolutional networks on CIFAR-10-class image data, end to end."""

__version__ = "0.1.0"
