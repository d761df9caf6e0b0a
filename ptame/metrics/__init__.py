"""Faithfulness and localisation metrics of saliency maps: AD/IC, deletion/insertion, ROAD, pointing game.

Every metric takes maps, not methods, so any explainer's output can be scored the same way. ROAD
(``road``, ``road_auc``, ``RoadCurves``) loads pytorch-grad-cam and SciPy, so it is imported on
first use only.
"""

import importlib

from ptame.metrics.ad_ic import ad_ic, keep_top
from ptame.metrics.curves import DeletionInsertion, deletion_insertion
from ptame.metrics.pointing import energy_pointing_game, pointing_game, predicted_object_masks

ROAD_MODULE = "ptame.metrics.remove_and_debias"
ROAD_NAMES = ("RoadCurves", "road", "road_auc")

__all__ = [
    "DeletionInsertion",
    "RoadCurves",
    "ad_ic",
    "deletion_insertion",
    "energy_pointing_game",
    "keep_top",
    "pointing_game",
    "predicted_object_masks",
    "road",
    "road_auc",
]


def __getattr__(name: str) -> object:
    """ROAD's names, imported when first asked for."""
    if name in ROAD_NAMES:
        return getattr(importlib.import_module(ROAD_MODULE), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
