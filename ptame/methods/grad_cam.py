"""Grad-CAM (Selvaraju et al. 2017): the target layer's channels weighted by their mean gradient.

Computes what pytorch-grad-cam's ``GradCAM`` computes (tests check per-map correlation >= 0.999), on
the model's device and batched, with a forward hook that only records the calling thread's forward
pass and is always removed: pytorch-grad-cam's hooks record any forward pass through the layer (a
concurrent request of a demo would corrupt the map) and its context manager swallows IndexError.
CAM methods read ``backbone.target_layer`` (for transformers through ``backbone.reshape_transform``).
"""

import torch

from ptame.checks import check_inputs
from ptame.loading.backbones import Backbone
from ptame.methods.hooks import finish_maps, target_layer_gradients
from ptame.methods.registry import register_method


@register_method("gradcam", "Grad-CAM", passes=lambda channels, options: 2, default=True, reference=True)
def grad_cam(backbone: Backbone, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): channels weighted by their mean gradient.

    Args:
        backbone: the classifier.
        pixels: (B, 3, H, W) in [0, 1].
        classes: (B,) int64, the class to explain for each image.

    Returns:
        (B, H, W) in [0, 1].
    """
    classes = check_inputs(pixels, classes)
    activations, gradients = target_layer_gradients(backbone, pixels, classes)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return finish_maps((weights * activations).sum(dim=1), tuple(pixels.shape[-2:]))
