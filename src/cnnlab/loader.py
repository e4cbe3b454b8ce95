"""The in-memory loader: the whole split lives on the device as uint8; batches are sliced,
augmented (augment.Augmentation) and normalized there. This replaces the chapter's per-image PIL +
DataLoader path."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .augment import Augmentation


@dataclass
class Normalizer:
    """uint8 [0, 255] -> float, (x/255 - mean) / std per channel, as one multiply-add."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    _constants: dict = field(default_factory=dict, repr=False)

    def _for(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scale for uint8 input, scale for [0, 1] input, shift), made once per device: no copy per batch."""
        if device not in self._constants:
            std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
            mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
            self._constants[device] = (1.0 / (255.0 * std), 1.0 / std, -mean / std)
        return self._constants[device]

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) per channel as [1, C, 1, 1] tensors on `device`, in [0, 1] units."""
        _, scale, shift = self._for(device)
        return -shift / scale, 1.0 / scale

    def __call__(self, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        scale, _, shift = self._for(images.device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)  # cheaper on uint8
        return torch.addcmul(shift, images.float(), scale)

    def from_unit(self, x01: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """The same normalisation for float pixels already in [0, 1] (after colour jitter)."""
        _, scale, shift = self._for(x01.device)
        out = torch.addcmul(shift, x01, scale)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


class Loader:
    """Batches of one split: in order and unaltered for evaluation, or, given an `augment`, shuffled and
    varied for training. Training order and augmentation draw from their own generators, so each is
    reproducible from the seed and can be saved and restored mid-run, even mid-epoch: `position`
    counts the batches handed out this epoch, and `epoch_start` is the order generator's state before
    this epoch's shuffle, so a resumed epoch re-draws the same order and skips ahead. `epochs_done`
    counts finished epochs (alternate flips and early crops depend on it).

    With alternate_flip, a seeded random half of the images is mirrored in even epochs and the other
    half in odd ones, so every image is seen both ways every two epochs."""

    def __init__(
        self,
        images,
        labels,
        batch_size,
        normalize: Normalizer,
        *,
        device,
        augment: Augmentation | None = None,
        seed=0,
        channels_last=False,
        rank=0,
        world_size=1,
        sample_weights: torch.Tensor | None = None,
    ):
        self.images = images.to(device)
        # Given (imbalance.balanced_sample_weights), each epoch draws len(labels) images with replacement,
        # each with its weight's chance, instead of a permutation of them all.
        self.sample_weights = None if sample_weights is None else sample_weights.to(self.images.device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.normalize = normalize
        self.augment = augment
        self.channels_last = channels_last
        # Data-parallel: every rank draws the same order (same seed) and takes its slice of each global
        # batch; augmentation draws are the rank's own (rank 0's stream is the single-process one).
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.order_generator = torch.Generator(device=self.images.device).manual_seed(seed)
        self.augment_generator = torch.Generator(device=self.images.device).manual_seed(seed + 1 + 100_003 * rank)
        self.position = 0
        self.epoch_start = self.order_generator.get_state()
        self.epochs_done = 0
        self.flip_first = None
        if augment is not None and augment.alternate_flip:  # fixed by the seed, so it needs no saving
            flips = torch.Generator(device=self.images.device).manual_seed(seed + 2)
            self.flip_first = torch.rand(len(self.labels), generator=flips, device=self.images.device) < 0.5

    @property
    def train(self) -> bool:
        return self.augment is not None

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.augment is None:  # evaluation: clean images, in order
            for start in range(0, n, self.batch_size):
                images = self.images[start : start + self.batch_size]
                yield self.normalize(images, self.channels_last), self.labels[start : start + self.batch_size]
            return
        if self.position == 0:
            self.epoch_start = self.order_generator.get_state()
        else:  # resuming mid-epoch: the same shuffle as the interrupted epoch
            self.order_generator.set_state(self.epoch_start)
        if self.sample_weights is None:
            order = torch.randperm(n, generator=self.order_generator, device=self.images.device)
        else:
            order = torch.multinomial(self.sample_weights, n, replacement=True, generator=self.order_generator)
        for start in range(self.position * self.batch_size, n, self.batch_size):
            self.position = start // self.batch_size + 1  # handed out = trained on, once the step finishes
            index = order[start : start + self.batch_size]
            if self.world_size > 1:  # this rank's contiguous slice; the slices together are the global batch
                n_batch = len(index)
                index = index[n_batch * self.rank // self.world_size : n_batch * (self.rank + 1) // self.world_size]
            mirrored = None if self.flip_first is None else self.flip_first[index] ^ bool(self.epochs_done % 2)
            x = self.augment.apply(
                self.images[index],
                self.augment_generator,
                self.normalize,
                self.epochs_done,
                mirrored,
                self.channels_last,
            )
            yield x, self.labels[index]
        self.position = 0
        self.epochs_done += 1

    def part(self, start: int, stop: int | None) -> Loader:
        """A fresh loader of the same kind over images[start:stop] (the bench's warm-up and timed steps)."""
        return Loader(
            self.images[start:stop],
            self.labels[start:stop],
            self.batch_size,
            self.normalize,
            device=self.images.device,
            augment=self.augment,
            seed=self.seed,
            channels_last=self.channels_last,
            rank=self.rank,
            world_size=self.world_size,
            sample_weights=None if self.sample_weights is None else self.sample_weights[start:stop],
        )

    def crop_size(self) -> int:
        """The side of this epoch's training crops; 0 = whole images."""
        return self.augment.crop_size(self.epochs_done) if self.augment is not None else 0

    def state_dict(self) -> dict:
        return {
            "order": self.order_generator.get_state(),
            "augment": self.augment_generator.get_state(),
            "epoch_start": self.epoch_start,
            "position": self.position,
            "epochs_done": self.epochs_done,
        }

    def load_state_dict(self, state: dict) -> None:
        self.order_generator.set_state(state["order"])
        self.augment_generator.set_state(state["augment"])
        self.epoch_start = state.get("epoch_start", self.order_generator.get_state())
        self.position = state.get("position", 0)
        self.epochs_done = state.get("epochs_done", 0)
