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


class AttentionHead(nn.Module):
    """Per-level blocks, bilinear upsampling to the finest level, concatenation, and a bias-free
    1x1 "fuser" convolution to one channel per class.

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
            if tuple(fused.shape[-2:]) != tuple(size):
                fused = F.interpolate(fused, size=tuple(size), mode="bilinear", align_corners=False)
            maps = fused if maps is None else maps + fused
        return maps
