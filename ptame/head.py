"""The P-TAME attention head: auxiliary feature maps -> one saliency map per class."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FeatureLevel(nn.Module):
    """One feature level: 1x1 conv (c -> c, bias) + BatchNorm, residual, ReLU.

    (B, c, h, w) -> (B, c, h, w), values >= 0.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1, bias=True)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(features)) + features)


def upsample_to_finest(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling as the official head does it: repeated x2 steps, then an exact resize.

    The official code applies ``nn.Upsample(scale_factor=2, mode="bilinear")`` (align_corners
    False) log2(H / h) times, 7 -> 14 -> 28 -> 56 for layer4 at 224 pixels; one direct 7 -> 56
    resize is a different operator. Where a level's size is not a power-of-two fraction of the
    finest level's (other input sizes, other auxiliary networks), x2 steps are taken while both
    sides stay within the target, then one bilinear resize reaches the exact size.

    Args:
        maps: (B, C, h, w), any real values.
        size: (H, W) with H >= h and W >= w.

    Returns:
        (B, C, H, W).
    """
    height, width = size
    while 2 * maps.shape[-2] <= height and 2 * maps.shape[-1] <= width:
        maps = F.interpolate(maps, scale_factor=2.0, mode="bilinear", align_corners=False)
    if tuple(maps.shape[-2:]) != (height, width):
        maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
    return maps


class AttentionHead(nn.Module):
    """Per-level blocks, bilinear upsampling to the finest level (``upsample_to_finest``: the
    official cascade of x2 steps), concatenation, and a bias-free 1x1 "fuser" convolution to one
    channel per class.

    The fuser is linear and bilinear upsampling acts on each channel with the same weights, so
    fusing each level at its own resolution and upsampling the fused maps gives the same maps as
    upsampling and concatenating the levels first (the reference design), with far less work:
    only the requested classes' rows of the fuser are evaluated, and only the fused maps are
    upsampled. ``tests/test_head.py`` checks the equality, values and gradients.
    """

    def __init__(self, channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        self.num_classes = int(num_classes)
        self.levels = nn.ModuleList(FeatureLevel(c) for c in self.channels)
        self.fuser = nn.Conv2d(sum(self.channels), self.num_classes, kernel_size=1, bias=False)

    def forward(self, features: Sequence[torch.Tensor], classes: torch.Tensor | None = None) -> torch.Tensor:
        """Raw (pre-normalisation) class maps.

        Args:
            features: one (B, c_l, h_l, w_l) tensor per level, channels as in ``self.channels``.
            classes: (k,) int64 class indices, or None for all K classes.

        Returns:
            (B, k, h, w) raw maps, any real value, at the finest level's resolution (h, w).
        """
        if len(features) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} feature levels, got {len(features)}")
        weight = self.fuser.weight if classes is None else self.fuser.weight[classes]
        size = max((f.shape[-2:] for f in features), key=lambda hw: hw[0] * hw[1])
        maps = None
        for level, block, level_weight in zip(features, self.levels, weight.split(self.channels, dim=1)):
            fused = F.conv2d(block(level), level_weight.to(level.dtype))
            fused = upsample_to_finest(fused, tuple(size))
            maps = fused if maps is None else maps + fused
        return maps
