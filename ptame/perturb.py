"""Masking in pixel space: resize a saliency map, multiply the image by it, re-normalise.

Every image tensor in ptame is in *pixel space*: (B, 3, H, W) float in [0, 1]. Classifiers
and auxiliary networks see normalised images, made here with their own mean and std.
"""

from collections.abc import Callable, Sequence

import torch

from ptame.maps import resize_maps

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalise pixel-space images channel-wise.

    Args:
        pixels: (B, C, H, W) in [0, 1].
        mean, std: C values each.

    Returns:
        (B, C, H, W) tensor ``(pixels - mean) / std``, same dtype and device.
    """
    mean_t = torch.as_tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return (pixels - mean_t) / std_t


def mask_pixels(pixels: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Multiply each image by its saliency map, in pixel space.

    Args:
        pixels: (B, 3, H, W) in [0, 1].
        maps: (B, h, w) in [0, 1]; resized bilinearly to (H, W) first.

    Returns:
        (B, 3, H, W) in [0, 1]: ``pixels * resize(maps)``.
    """
    return pixels * resize_maps(maps, tuple(pixels.shape[-2:])).unsqueeze(1)


def masked_logits(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    maps: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Logits of a classifier on images masked by maps: mask in pixel space, then normalise.

    Args:
        classifier: callable, normalised (B, 3, H, W) -> (B, K) logits.
        pixels: (B, 3, H, W) in [0, 1].
        maps: (B, h, w) in [0, 1].
        mean, std: the classifier's input normalisation.

    Returns:
        (B, K) logits.
    """
    return classifier(normalize(mask_pixels(pixels, maps), mean, std))
