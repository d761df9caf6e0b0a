"""Localisation metrics against ground-truth object masks: the pointing game and its energy-based form."""

import torch
import torch.nn.functional as F

from ptame.maps import resize_maps


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


def predicted_object_masks(
    classes: torch.Tensor, object_classes: torch.Tensor, object_masks: torch.Tensor
) -> torch.Tensor:
    """The ground truth of each image's prediction, among the objects of the image.

    Args:
        classes: (B,) int64, the predicted classes.
        object_classes: (B, N) int64, each object's class, -1 past the image's objects.
        object_masks: (B, N, H, W) bool, each object's mask.

    Returns:
        (B, H, W) bool: the mask of the object of the predicted class (of them all, if several),
        or of all the image's objects when none is of the predicted class.
    """
    present = object_classes >= 0
    match = present & (object_classes == classes[:, None])
    chosen = torch.where(match.any(dim=1, keepdim=True), match, present)
    return (object_masks.bool() & chosen[:, :, None, None]).any(dim=1)
