"""ptame: P-TAME saliency maps for any image classifier.

Images are pixel-space tensors, (B, 3, H, W) in [0, 1]; maps are (B, H, W) in [0, 1].
"""

from ptame.backbones import Backbone, Preprocessing, create_backbone
from ptame.explainer import PTAME, normalize_maps
from ptame.hub import CheckpointError
from ptame.loss import LossWeights
from ptame.training import TrainingDiverged, TrainSettings, train_explainer

__all__ = [
    "PTAME",
    "Backbone",
    "CheckpointError",
    "LossWeights",
    "Preprocessing",
    "TrainSettings",
    "TrainingDiverged",
    "create_backbone",
    "normalize_maps",
    "train_explainer",
]
