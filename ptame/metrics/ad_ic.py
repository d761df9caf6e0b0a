"""Average Drop and Increase in Confidence (Chattopadhay et al. 2018) of saliency maps.

Inputs: pixels (B, 3, H, W) in [0, 1], maps (B, h, w) in [0, 1] (resized bilinearly to (H, W)),
classes (B,) int64 (in the evaluation protocol, the classifier's own prediction). Results are per
image; average them over a dataset.
"""

from collections.abc import Sequence

import torch

from ptame.checks import check_classes_fit, check_inputs, check_maps
from ptame.loading.backbones import Backbone
from ptame.metrics.scoring import class_probabilities
from ptame.perturb import mask_pixels


def keep_top(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the top ``round(fraction * H * W)`` pixels of each map with their values, zero the rest.

    Args:
        maps: (B, H, W) in [0, 1].
        fraction: in (0, 1]; 1 keeps the whole map.

    Returns:
        (B, H, W) in [0, 1] (ties at the threshold broken by ``torch.topk``).
    """
    flat = maps.flatten(1)
    count = round(fraction * flat.shape[1])
    if count >= flat.shape[1]:
        return maps
    values, indices = flat.topk(count, dim=1)
    return torch.zeros_like(flat).scatter_(1, indices, values).view_as(maps)


def ad_ic(
    backbone: Backbone,
    pixels: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    fractions: Sequence[float] = (1.0, 0.5, 0.15),
) -> dict[str, torch.Tensor]:
    """Average Drop and Increase in Confidence (Chattopadhay et al. 2018) at each kept fraction.

    For each fraction X: keep the top X of the map's pixels with their soft values (zero elsewhere),
    multiply the image by it in pixel space, re-normalise, and compare the class probability O on
    that image with Y on the clean one.

    Args:
        backbone: the classifier.
        pixels: (B, 3, H, W) in [0, 1].
        maps: (B, h, w) in [0, 1].
        classes: (B,) int64.
        fractions: kept fractions in (0, 1].

    Returns:
        For each fraction, with ``P = round(100 * X)``: ``f"ad_{P}"`` (B,) float, the drop
        ``max(0, Y - O) / Y * 100`` (its mean over images is AD; lower is better), and ``f"ic_{P}"``
        (B,) bool, ``O > Y`` (its mean x 100 is IC; higher is better).
    """
    classes = check_inputs(pixels, classes)
    check_classes_fit(classes, len(backbone.class_names))
    maps = check_maps(pixels, maps)
    if any(not 0.0 < fraction <= 1.0 for fraction in fractions):
        raise ValueError(f"AD/IC fractions must be in (0, 1], got {tuple(fractions)}")
    results = {}
    with torch.inference_mode():
        clean = class_probabilities(backbone, pixels, classes)
        for fraction in fractions:
            masked = class_probabilities(backbone, mask_pixels(pixels, keep_top(maps, fraction)), classes)
            percent = round(100 * fraction)
            drop = (clean - masked).clamp_min(0) / clean.clamp_min(torch.finfo(clean.dtype).tiny)
            results[f"ad_{percent}"] = drop * 100
            results[f"ic_{percent}"] = masked > clean
    return results
