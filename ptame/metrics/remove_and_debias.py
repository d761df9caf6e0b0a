"""ROAD, RemOve And Debias (Rong et al. 2022): remove the most / least relevant pixels, impute them, re-classify.

Removing pixels by blacking them out leaks the mask's shape to the classifier; ROAD fills them from
their surroundings instead. Noisy linear imputation (the ROAD paper's choice) solves, for the removed
pixels, "each pixel is the weighted mean of its 8 neighbours" (pytorch-grad-cam's copy of the
authors' ``NoisyLinearImputer``) and adds Gaussian noise; OpenCV's Telea inpainting is the option
the P-TAME reference code uses. Kept pixels are never changed.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pytorch_grad_cam.metrics.road import NoisyLinearImputer, neighbors_weights
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve

from ptame.checks import check_classes_fit, check_inputs, check_maps
from ptame.loading.backbones import Backbone

IMPUTATIONS = ("linear", "telea")
LINEAR_NOISE_STD = 0.01  # Rong et al. 2022 (absolute; here in pixel units, images in [0, 1])
TELEA_RADIUS = 3  # pixels; OpenCV's inpainting tutorial value


@dataclass(frozen=True)
class RoadCurves:
    """ROAD results of a batch.

    Attributes:
        fractions: F fractions of pixels removed, increasing, in (0, 1).
        most_relevant_first: (B, F) bool, whether the class is still predicted after removing the
            given fraction of the *most* relevant pixels (MoRF; lower is better).
        least_relevant_first: (B, F) bool, the same after removing the *least* relevant pixels
            (LeRF; higher is better).
    """

    fractions: tuple[float, ...]
    most_relevant_first: torch.Tensor
    least_relevant_first: torch.Tensor


def road_auc(fractions: Sequence[float], accuracy: torch.Tensor) -> torch.Tensor:
    """Area under a ROAD curve: trapezoids through (0, 1), the measured points and (1, 0).

    Args:
        fractions: F fractions removed, increasing, in (0, 1).
        accuracy: (..., F) accuracies (or per-image 0/1 outcomes) in [0, 1].

    Returns:
        (...) areas in [0, 1]. The area is linear in the accuracies, so the mean of per-image areas
        is the area of the mean curve.
    """
    accuracy = accuracy.float()
    xs = torch.tensor([0.0, *fractions, 1.0], device=accuracy.device)
    ones = torch.ones(*accuracy.shape[:-1], 1, device=accuracy.device)
    ys = torch.cat([ones, accuracy, torch.zeros_like(ones)], dim=-1)
    return torch.trapezoid(ys, xs, dim=-1)


def impute(pixels: torch.Tensor, removed: torch.Tensor, imputation: str = "linear", seed: int = 0) -> torch.Tensor:
    """Fill the removed pixels of each image from the kept ones.

    Args:
        pixels: (B, 3, H, W) in [0, 1].
        removed: (B, H, W) bool, True where a pixel is removed.
        imputation: "linear" (noisy linear imputation, noise std ``LINEAR_NOISE_STD``) or "telea".
        seed: the seed of the linear imputation's noise.

    Returns:
        (B, 3, H, W) in [0, 1] on the device of ``pixels``; kept pixels are bit-identical to the input.
    """
    if imputation not in IMPUTATIONS:
        raise ValueError(f"unknown imputation {imputation!r}; choose one of {IMPUTATIONS}")
    if removed.shape != (pixels.shape[0], *pixels.shape[2:]):
        expected = (pixels.shape[0], *pixels.shape[2:])
        raise ValueError(f"removed must be (B, H, W) = {expected}, got {tuple(removed.shape)}")
    generator = torch.Generator().manual_seed(seed)
    images = pixels.detach().cpu()
    masks = removed.bool().cpu()
    filled = []
    for image, mask in zip(images, masks):
        if not mask.any():
            filled.append(image)
            continue
        values = image.float()  # imputed in float32; the kept pixels keep the input's dtype and bits
        if imputation == "linear":
            noisy = _linear_imputation(values, mask) + LINEAR_NOISE_STD * torch.randn(values.shape, generator=generator)
        else:
            as_bytes = (values.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
            inpainted = cv2.inpaint(as_bytes, mask.numpy().astype(np.uint8) * 255, TELEA_RADIUS, cv2.INPAINT_TELEA)
            noisy = torch.from_numpy(inpainted).permute(2, 0, 1).float() / 255
        filled.append(torch.where(mask, noisy.clamp(0, 1).to(image.dtype), image))
    return torch.stack(filled).to(pixels.device)


def _linear_imputation(image: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """(3, H, W) image with its removed pixels ((H, W) bool) solved as the weighted mean of their neighbours."""
    keep = (~removed).numpy().astype(np.float32)
    system, right_hand_side = NoisyLinearImputer.setup_sparse_system(keep, image.numpy(), neighbors_weights)
    solution = spsolve(csc_matrix(system), right_hand_side).reshape(-1, image.shape[0])
    filled = image.clone().view(image.shape[0], -1)
    filled[:, removed.flatten()] = torch.from_numpy(solution.T).float()
    return filled.view_as(image)


def ranked_pixels(maps: torch.Tensor, fraction: float, largest: bool) -> torch.Tensor:
    """The ``round(fraction * H * W)`` highest (or lowest) pixels of each map.

    Args:
        maps: (B, H, W).
        fraction: in [0, 1].
        largest: True for the highest values, False for the lowest.

    Returns:
        (B, H, W) bool, exactly that many True per map (ties broken by ``torch.topk``).
    """
    flat = maps.flatten(1)
    count = round(fraction * flat.shape[1])
    selected = torch.zeros_like(flat, dtype=torch.bool)
    selected.scatter_(1, flat.topk(count, dim=1, largest=largest).indices, True)
    return selected.view_as(maps)


def road(
    backbone: Backbone,
    pixels: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7),
    imputation: str = "linear",
    seed: int = 0,
) -> RoadCurves:
    """ROAD: is the class still predicted after removing (and imputing) the most / least relevant pixels?

    Args:
        backbone: the classifier.
        pixels: (B, 3, H, W) in [0, 1].
        maps: (B, h, w) in [0, 1], resized bilinearly to (H, W) to rank the pixels.
        classes: (B,) int64, the classes explained (the classifier's predictions, in the protocol).
        fractions: fractions of pixels removed, increasing, in (0, 1).
        imputation: "linear" (noisy linear, Rong et al. 2022) or "telea" (OpenCV inpainting).
        seed: the seed of the linear imputation's noise.

    Returns:
        The MoRF and LeRF outcomes, (B, F) bool each; summarise them with ``road_auc``.
    """
    classes = check_inputs(pixels, classes)
    check_classes_fit(classes, len(backbone.class_names))
    maps = check_maps(pixels, maps)
    fractions = tuple(float(fraction) for fraction in fractions)
    if not fractions or any(not 0.0 < f < 1.0 for f in fractions) or list(fractions) != sorted(set(fractions)):
        raise ValueError(f"ROAD fractions must be distinct, increasing and in (0, 1), got {fractions}")
    outcomes = {}
    with torch.inference_mode():
        for largest in (True, False):
            kept_prediction = []
            for fraction in fractions:
                removed = ranked_pixels(maps, fraction, largest)
                imputed = impute(pixels, removed, imputation, seed)
                kept_prediction.append(backbone.logits(imputed).argmax(dim=1) == classes)
            outcomes[largest] = torch.stack(kept_prediction, dim=1)
    return RoadCurves(fractions, most_relevant_first=outcomes[True], least_relevant_first=outcomes[False])
