"""Faithfulness and localisation metrics of saliency maps: AD/IC, deletion/insertion, ROAD, pointing game.

Every metric takes maps, not methods, so any explainer's output can be scored the same way. Inputs:
pixels (B, 3, H, W) in [0, 1], maps (B, h, w) in [0, 1] (resized bilinearly to (H, W)), classes
(B,) int64 (in the evaluation protocol, the classifier's own prediction). Results are per image;
average them over a dataset.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ptame.backbones import Backbone
from ptame.perturb import mask_pixels, resize_maps
from ptame.road import RoadCurves, road, road_auc
from ptame.saliency import check_classes_fit, check_inputs, check_maps

__all__ = [
    "DeletionInsertion",
    "RoadCurves",
    "ad_ic",
    "deletion_insertion",
    "energy_pointing_game",
    "keep_top",
    "pointing_game",
    "road",
    "road_auc",
]

# RISE's insertion substrate (Petsiuk et al. 2018): the image blurred by an 11x11 Gaussian of sigma 5.
INSERTION_BLUR_KERNEL = 11
INSERTION_BLUR_SIGMA = 5.0


def _class_probabilities(backbone: Backbone, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(B,) softmax probability of each image's class."""
    return torch.softmax(backbone.logits(pixels).float(), dim=1).gather(1, classes[:, None])[:, 0]


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
        clean = _class_probabilities(backbone, pixels, classes)
        for fraction in fractions:
            masked = _class_probabilities(backbone, mask_pixels(pixels, keep_top(maps, fraction)), classes)
            percent = round(100 * fraction)
            drop = (clean - masked).clamp_min(0) / clean.clamp_min(torch.finfo(clean.dtype).tiny)
            results[f"ad_{percent}"] = drop * 100
            results[f"ic_{percent}"] = masked > clean
    return results


@dataclass(frozen=True)
class DeletionInsertion:
    """Deletion and insertion curves (Petsiuk et al. 2018) of a batch.

    Attributes:
        fractions: (S + 1,) fractions of pixels deleted / inserted, 0 to 1.
        deletion: (B, S + 1) class probability as the most salient pixels are set to black first
            (lower area is better).
        insertion: (B, S + 1) class probability as the most salient pixels are copied first onto
            a blurred copy of the image (higher area is better).
        deletion_auc, insertion_auc: (B,) trapezoidal areas under the curves, in [0, 1].
    """

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor


def deletion_insertion(
    backbone: Backbone,
    pixels: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    steps: int = 50,
    batch_size: int = 64,
) -> DeletionInsertion:
    """Deletion and insertion curves and their areas.

    Step i of S changes the ``round(i / S * H * W)`` most salient pixels (ties broken by a stable
    sort). Cost: ``2 * (S + 1)`` forward passes per image, ``batch_size`` images per pass.

    Args:
        backbone: the classifier.
        pixels: (B, 3, H, W) in [0, 1].
        maps: (B, h, w) in [0, 1].
        classes: (B,) int64.
        steps: S, the number of steps from 0 to all pixels.
        batch_size: images per forward pass.

    Returns:
        The curves and areas, on the device of ``pixels``.
    """
    classes = check_inputs(pixels, classes)
    check_classes_fit(classes, len(backbone.class_names))
    maps = check_maps(pixels, maps)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    count, height, width = maps.shape
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(height * width, device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions).view(count, 1, height, width)
    thresholds = [round(step / steps * height * width) for step in range(steps + 1)]
    blurred = TF.gaussian_blur(pixels, [INSERTION_BLUR_KERNEL] * 2, [INSERTION_BLUR_SIGMA] * 2)
    jobs = [
        (kind, step, image) for kind in ("deletion", "insertion") for step in range(steps + 1) for image in range(count)
    ]
    scores = torch.empty(len(jobs), device=pixels.device)
    with torch.inference_mode():
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            images = []
            for kind, step, image in chunk:
                changed = rank[image] < thresholds[step]
                if kind == "deletion":
                    images.append(torch.where(changed, torch.zeros_like(pixels[image]), pixels[image]))
                else:
                    images.append(torch.where(changed, pixels[image], blurred[image]))
            chunk_classes = classes[[image for _, _, image in chunk]]
            scores[start : start + len(chunk)] = _class_probabilities(backbone, torch.stack(images), chunk_classes)
    curves = scores.view(2, steps + 1, count).transpose(1, 2)
    fractions = torch.tensor(thresholds, device=pixels.device, dtype=torch.float32) / (height * width)
    return DeletionInsertion(
        fractions=fractions,
        deletion=curves[0],
        insertion=curves[1],
        deletion_auc=torch.trapezoid(curves[0], fractions, dim=1),
        insertion_auc=torch.trapezoid(curves[1], fractions, dim=1),
    )


def _check_ground_truth(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if masks.dim() != 3 or maps.dim() != 3 or masks.shape[0] != maps.shape[0]:
        raise ValueError(
            f"maps and masks must be (B, h, w) and (B, H, W), got {tuple(maps.shape)} and {tuple(masks.shape)}"
        )
    masks = masks.to(device=maps.device).bool()
    if not masks.flatten(1).any(dim=1).all():
        raise ValueError("every ground-truth mask must contain at least one pixel")
    return resize_maps(maps.float(), tuple(masks.shape[-2:])), masks


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Pointing game (Zhang et al. 2018): does the map's maximum fall on the object?

    Args:
        maps: (B, h, w) saliency maps, resized bilinearly to the masks' size.
        masks: (B, H, W) bool ground truth, each with at least one True pixel.
        tolerance: a hit may miss the object by up to this many pixels (Euclidean distance;
            Zhang et al. allow 15 pixels on their datasets). 0: the maximum must lie on the mask.

    Returns:
        (B,) bool hits (the first maximum in row-major order, if several).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    maps, masks = _check_ground_truth(maps, masks)
    if tolerance:
        offsets = torch.arange(-tolerance, tolerance + 1, device=masks.device, dtype=torch.float32)
        disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= tolerance**2).float()[None, None]
        masks = F.conv2d(masks[:, None].float(), disk, padding=tolerance)[:, 0] > 0
    peaks = maps.flatten(1).argmax(dim=1, keepdim=True)
    return masks.flatten(1).gather(1, peaks)[:, 0]


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM): the share of the map's mass on the object.

    Args:
        maps: (B, h, w) non-negative saliency maps, resized bilinearly to the masks' size.
        masks: (B, H, W) bool ground truth, each with at least one True pixel.

    Returns:
        (B,) in [0, 1]: ``sum(map * mask) / sum(map)`` (0 for an all-zero map).
    """
    maps, masks = _check_ground_truth(maps, masks)
    if maps.numel() and maps.min() < 0:
        raise ValueError("the energy-based pointing game needs non-negative maps")
    inside = (maps * masks).flatten(1).sum(dim=1)
    total = maps.flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))
