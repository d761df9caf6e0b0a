"""A split of a generated world as a Dataset: consecutive images, each with its label and mask."""

from collections.abc import Callable, Collection
from typing import Protocol

import torch


class WorldSample(Protocol):
    """One generated image: pixels (3, S, S) float32 in [0, 1], label, mask (S, S) bool."""

    pixels: torch.Tensor
    label: int
    mask: torch.Tensor


def check_split(split: str, splits: Collection[str]) -> None:
    """Raise ValueError unless ``split`` is one of ``splits``."""
    if split not in splits:
        raise ValueError(f"unknown split {split!r}: expected one of {sorted(splits)}")


class WorldImages(torch.utils.data.Dataset):
    """``length`` consecutive images of a split, from index ``start``.

    Args:
        sample: (index, split, size) -> the world's sample (``shapes_sample``, ``textures_sample``).
        split: one of ``splits``.
        length: >= 1 images. size: their side, >= ``min_size``. start: >= 0, the first index.

    Items are (pixels (3, S, S) float32 in [0, 1], label, mask (S, S) bool).
    """

    def __init__(
        self,
        sample: Callable[[int, str, int], WorldSample],
        split: str,
        length: int,
        size: int,
        start: int,
        splits: Collection[str],
        min_size: int,
    ) -> None:
        check_split(split, splits)
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if size < min_size:
            raise ValueError(f"size must be >= {min_size} pixels, got {size}")
        self.sample = sample
        self.split = split
        self.length = length
        self.size = size
        self.start = start

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        sample = self.sample(self.start + index, self.split, self.size)
        return sample.pixels, sample.label, sample.mask
