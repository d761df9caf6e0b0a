"""Saliency-map arithmetic: bilinear resizing and per-map min-max normalisation."""

import torch
import torch.nn.functional as F

# A map whose values span at most this share of their magnitude is constant: float32 rounding
# (about 6e-8 relative per operation) of a bilinear resize stays far below it.
CONSTANT_SPAN = 1e-5


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize saliency maps.

    Args:
        maps: (B, h, w) or (B, K, h, w).
        size: (H, W) of the result.

    Returns:
        (B, H, W) or (B, K, H, W), matching the input's rank. Values stay within each map's
        [min, max] (bilinear interpolation is a convex combination).
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if maps.dim() == 3:
        return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def normalize_maps(raw_maps: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Inference-time normalisation: bilinear resize, then per-map min-max.

    Args:
        raw_maps: (B, h, w) or (B, K, h, w) raw maps.
        size: (H, W) to resize to first, or None to keep (h, w).

    Returns:
        Same rank as the input, each map in [0, 1]. A constant map becomes all zeros, also when
        resizing left rounding noise on it (a span within ``CONSTANT_SPAN`` of its magnitude): a
        1x1 CAM resized is one value, not a pattern of 0s and 1s drawn by float rounding.
    """
    maps = resize_maps(raw_maps.float(), size) if size is not None else raw_maps.float()
    flat = maps.flatten(-2)
    low = flat.amin(-1, keepdim=True)
    high = flat.amax(-1, keepdim=True)
    constant = high - low <= CONSTANT_SPAN * torch.maximum(high.abs(), low.abs())
    span = (high - low).clamp_min(torch.finfo(flat.dtype).tiny)
    return torch.where(constant, 0.0, (flat - low) / span).view_as(maps)
