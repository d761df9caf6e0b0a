"""Deletion and insertion curves (Petsiuk et al. 2018) of saliency maps, and their areas."""

from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

from ptame.checks import check_classes_fit, check_inputs, check_maps
from ptame.loading.backbones import Backbone
from ptame.metrics.scoring import class_probabilities

# RISE's insertion substrate (Petsiuk et al. 2018): the image blurred by an 11x11 Gaussian of sigma 5.
INSERTION_BLUR_KERNEL = 11
INSERTION_BLUR_SIGMA = 5.0


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
            scores[start : start + len(chunk)] = class_probabilities(backbone, torch.stack(images), chunk_classes)
    curves = scores.view(2, steps + 1, count).transpose(1, 2)
    fractions = torch.tensor(thresholds, device=pixels.device, dtype=torch.float32) / (height * width)
    return DeletionInsertion(
        fractions=fractions,
        deletion=curves[0],
        insertion=curves[1],
        deletion_auc=torch.trapezoid(curves[0], fractions, dim=1),
        insertion_auc=torch.trapezoid(curves[1], fractions, dim=1),
    )
