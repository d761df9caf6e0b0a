"""How the metrics score a classifier's answer: the softmax probability of each image's class."""

import torch

from ptame.loading.backbones import Backbone


def class_probabilities(backbone: Backbone, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(B,) softmax probability of each image's class, for pixels (B, 3, H, W) in [0, 1] and classes (B,)."""
    return torch.softmax(backbone.logits(pixels).float(), dim=1).gather(1, classes[:, None])[:, 0]
