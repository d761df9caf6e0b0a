"""Anyone's attributions as ptame maps, and ptame's metrics on them.

captum returns attributions of the input's shape, (B, 3, H, W), or of a layer's, (B, 1, h, w), of
either sign; Quantus and many papers keep (B, 1, H, W) numpy arrays; a user's own method may give
(B, H, W). ``as_maps`` brings any of them to what ptame's metrics take, (B, H, W) in [0, 1], and
``score_maps`` runs those metrics and returns the mean figures under the column names of
``python -m train evaluate``'s evaluation.csv.
"""

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ptame.loading.backbones import Backbone
from ptame.maps import normalize_maps
from ptame.metrics import ad_ic, deletion_insertion, energy_pointing_game, pointing_game, road, road_auc

Sign = Literal["positive", "absolute"]


def as_maps(
    attributions: torch.Tensor | np.ndarray, size: tuple[int, int] | None = None, sign: Sign = "positive"
) -> torch.Tensor:
    """Attributions of any layout as saliency maps in [0, 1].

    Args:
        attributions: (B, H, W), (B, 1, H, W) or (B, C, H, W) real values, torch or numpy; the
            channels of a (B, C, H, W) attribution are summed (captum's convention for pixels).
        size: (H, W) to resize to bilinearly (an input's size, for a layer's attribution); None keeps it.
        sign: "positive" keeps the evidence for the class (negative values become 0, as Grad-CAM's
            ReLU); "absolute" takes magnitudes (gradient saliency, where the sign is arbitrary).

    Returns:
        (B, H, W) float32 in [0, 1], min-max normalised per map (``ptame.normalize_maps``); a map
        with no positive value (with "positive") is all zeros.

    Raises:
        ValueError: not 3-D or 4-D, not finite, or an unknown ``sign``.
    """
    maps = torch.as_tensor(np.asarray(attributions) if not isinstance(attributions, torch.Tensor) else attributions)
    maps = maps.detach().float()
    if maps.dim() == 4:
        maps = maps.sum(dim=1)
    if maps.dim() != 3:
        raise ValueError(f"attributions must be (B, H, W) or (B, C, H, W), got {tuple(maps.shape)}")
    if not torch.isfinite(maps).all():
        raise ValueError("attributions must be finite")
    if sign == "positive":
        maps = maps.clamp_min(0)
    elif sign == "absolute":
        maps = maps.abs()
    else:
        raise ValueError(f"sign must be 'positive' or 'absolute', got {sign!r}")
    return normalize_maps(maps, size)


def score_maps(
    backbone: Backbone,
    pixels: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    masks: torch.Tensor | None = None,
    *,
    ad_ic_fractions: Sequence[float] = (1.0, 0.5, 0.15),
    road_fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7),
    road_imputation: str = "telea",
    deletion_steps: int = 50,
    seed: int = 0,
) -> dict[str, float]:
    """ptame's metrics of one method's maps on a batch, as mean figures.

    Args:
        backbone: the classifier.
        pixels: (B, 3, H, W) in [0, 1].
        maps: (B, h, w) in [0, 1] (``as_maps`` makes them from any attribution).
        classes: (B,) int64, the classes the maps explain (the classifier's predictions, in the
            paper's protocol).
        masks: (B, H, W) bool ground-truth objects, for the pointing games; None skips them.
        ad_ic_fractions: kept fractions of AD/IC. road_fractions: removed fractions of ROAD.
        road_imputation: "telea" (OpenCV inpainting, the paper's protocol and
            ``python -m train evaluate``'s default) or "linear" (the ROAD paper's noisy linear
            imputation, seeded by ``seed``; slower).
        deletion_steps: steps of the deletion and insertion curves.

    Returns:
        ``ad_P`` (mean drop, %, lower is better), ``ic_P`` (% of images, higher is better) per
        fraction P; ``deletion_auc`` (lower) and ``insertion_auc`` (higher); ``road_morf_auc``
        (lower) and ``road_lerf_auc`` (higher); with masks, ``pointing_game`` (% of maps peaking on
        the object) and ``energy_pointing_game`` (share of the map's mass on it).
    """
    figures: dict[str, float] = {}
    for name, values in ad_ic(backbone, pixels, maps, classes, ad_ic_fractions).items():
        figures[name] = float(values.float().mean() * (100 if name.startswith("ic_") else 1))
    curves = deletion_insertion(backbone, pixels, maps, classes, steps=deletion_steps)
    figures["deletion_auc"] = float(curves.deletion_auc.mean())
    figures["insertion_auc"] = float(curves.insertion_auc.mean())
    outcomes = road(backbone, pixels, maps, classes, road_fractions, road_imputation, seed)
    figures["road_morf_auc"] = float(road_auc(road_fractions, outcomes.most_relevant_first).mean())
    figures["road_lerf_auc"] = float(road_auc(road_fractions, outcomes.least_relevant_first).mean())
    if masks is not None:
        figures["pointing_game"] = float(pointing_game(maps, masks).float().mean() * 100)
        figures["energy_pointing_game"] = float(energy_pointing_game(maps, masks).mean())
    return figures
