"""ptame: P-TAME saliency maps for any image classifier.

Images are pixel-space tensors, (B, 3, H, W) in [0, 1]; maps are (B, H, W) in [0, 1].
The saliency methods are also in ``ptame.methods``'s registry, the metrics in ``ptame.metrics``.
"""

from ptame.errors import CheckpointError, ImageInputError, ModelUnavailable, PtameError, TrainingDiverged
from ptame.explainer import PTAME
from ptame.loading.backbones import Backbone, Preprocessing, create_backbone
from ptame.loss import LossWeights
from ptame.maps import normalize_maps
from ptame.methods.ablation_cam import ablation_cam
from ptame.methods.grad_cam import grad_cam
from ptame.methods.grad_cam_plus_plus import grad_cam_plus_plus
from ptame.methods.p_tame import p_tame
from ptame.methods.rise import rise
from ptame.methods.score_cam import score_cam
from ptame.training import TrainSettings, train_explainer

__all__ = [
    "PTAME",
    "Backbone",
    "CheckpointError",
    "ImageInputError",
    "LossWeights",
    "ModelUnavailable",
    "Preprocessing",
    "PtameError",
    "TrainSettings",
    "TrainingDiverged",
    "ablation_cam",
    "create_backbone",
    "grad_cam",
    "grad_cam_plus_plus",
    "normalize_maps",
    "p_tame",
    "rise",
    "score_cam",
    "train_explainer",
]
