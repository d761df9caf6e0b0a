"""P-TAME as a saliency method: the explainer's map of each image's class, min-max normalised.

The explainer maps every class in one pass of its head; a caller that has made that pass (the app's
analysis of an image) passes its raw maps as ``all_class_maps`` and no network runs again.
"""

from typing import TYPE_CHECKING

import torch

from ptame.checks import check_inputs
from ptame.maps import normalize_maps
from ptame.methods.registry import register_method

if TYPE_CHECKING:
    from ptame.explainer import PTAME
    from ptame.loading.backbones import Backbone


@register_method("ptame", "P-TAME", passes=lambda channels, options: 0, default=True, uses_explainer=True)
def p_tame(
    backbone: "Backbone",
    pixels: torch.Tensor,
    classes: torch.Tensor,
    *,
    explainer: "PTAME",
    all_class_maps: torch.Tensor | None = None,
) -> torch.Tensor:
    """P-TAME saliency maps (Ntrougkas, Mezaris, Patras 2025).

    Args:
        backbone: the classifier (unused: the explainer was trained for it).
        pixels: (B, 3, H, W) in [0, 1].
        classes: (B,) int64, the class to explain for each image.
        explainer: the classifier's trained P-TAME explainer.
        all_class_maps: (B, K, h, w) raw maps of every class from ``explainer(pixels)``, if made
            already; else the explainer runs for the requested classes only.

    Returns:
        (B, H, W) in [0, 1], each map resized bilinearly to the input, then min-max normalised.
    """
    classes = check_inputs(pixels, classes)
    if all_class_maps is None:
        with torch.inference_mode():
            return explainer.explain(pixels, classes)
    if all_class_maps.dim() != 4 or all_class_maps.shape[0] != pixels.shape[0]:
        raise ValueError(
            f"all_class_maps must be (B, K, h, w) with B = {pixels.shape[0]}, got {tuple(all_class_maps.shape)}"
        )
    own = all_class_maps[torch.arange(pixels.shape[0], device=classes.device), classes]
    return normalize_maps(own, tuple(pixels.shape[-2:]))
