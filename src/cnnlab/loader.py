"""The in-memory loader: the whole split lives on the device as uint8; batches are sliced,
augmented and normalized there. This replaces the chapter's per-image PIL + DataLoader path."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .augment import random_crop_flip


@dataclass
class Normalizer:
    """uint8 [0, 255] -> float, (x/255 - mean) / std per channel, as one multiply-add."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    _constants: dict = field(default_factory=dict, repr=False)

    def __call__(self, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        if images.device not in self._constants:  # made once per device: no host-to-device copy per batch
            std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
            mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
            self._constants[images.device] = (1.0 / (255.0 * std), -mean / std)
        scale, shift = self._constants[images.device]
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)  # cheaper on uint8
        return torch.addcmul(shift, images.float(), scale)


class Loader:
    """Batches of one split. Training order and augmentation draw from their own generators,
    so each is reproducible from the seed and can be saved and restored mid-run, even mid-epoch:
    `position` counts the batches handed out this epoch, and `epoch_start` is the order generator's
    state before this epoch's shuffle, so a resumed epoch re-draws the same order and skips ahead."""

    def __init__(self, images, labels, batch_size, normalize: Normalizer, *, device, train=False,
                 crop_padding=4, flip=True, seed=0, channels_last=False):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.normalize = normalize
        self.train = train
        self.crop_padding = crop_padding
        self.flip = flip
        self.channels_last = channels_last
        self.order_generator = torch.Generator(device=self.images.device).manual_seed(seed)
        self.augment_generator = torch.Generator(device=self.images.device).manual_seed(seed + 1)
        self.position = 0
        self.epoch_start = self.order_generator.get_state()

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.train:
            if self.position == 0:
                self.epoch_start = self.order_generator.get_state()
            else:  # resuming mid-epoch: the same shuffle as the interrupted epoch
                self.order_generator.set_state(self.epoch_start)
            order = torch.randperm(n, generator=self.order_generator, device=self.images.device)
        for start in range(self.position * self.batch_size if self.train else 0, n, self.batch_size):
            if self.train:
                self.position = start // self.batch_size + 1  # handed out = trained on, once the step finishes
                index = order[start:start + self.batch_size]
                x = random_crop_flip(self.images[index], self.crop_padding, self.flip, self.augment_generator)
                y = self.labels[index]
            else:  # evaluation: clean images, in order
                x = self.images[start:start + self.batch_size]
                y = self.labels[start:start + self.batch_size]
            yield self.normalize(x, self.channels_last), y
        self.position = 0

    def state_dict(self) -> dict:
        return {"order": self.order_generator.get_state(), "augment": self.augment_generator.get_state(),
                "epoch_start": self.epoch_start, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.order_generator.set_state(state["order"])
        self.augment_generator.set_state(state["augment"])
        self.epoch_start = state.get("epoch_start", self.order_generator.get_state())
        self.position = state.get("position", 0)
