"""Grad-CAM++ (Chattopadhay et al. 2018): channels weighted by their positive gradients, per pixel.

Computes what pytorch-grad-cam's ``GradCAMPlusPlus`` computes (Eq. 19 with exponential scores; tests
check per-map correlation >= 0.999), with the thread-safe hooks of ``ptame.methods.hooks``.
"""

import torch

from ptame.checks import check_inputs
from ptame.loading.backbones import Backbone
from ptame.methods.hooks import finish_maps, target_layer_gradients
from ptame.methods.registry import register_method

GRAD_CAM_PLUS_PLUS_EPS = 1e-6  # pytorch-grad-cam's constant in the denominator of Eq. 19


@register_method("gradcam++", "Grad-CAM++", passes=lambda channels, options: 2)
def grad_cam_plus_plus(backbone: Backbone, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ maps (Eq. 19 with exponential scores, as pytorch-grad-cam), with ``grad_cam``'s inputs.

    Returns:
        (B, H, W) in [0, 1] for pixels (B, 3, H, W) in [0, 1] and classes (B,) int64.
    """
    classes = check_inputs(pixels, classes)
    activations, gradients = target_layer_gradients(backbone, pixels, classes)
    squared = gradients**2
    activation_sums = activations.sum(dim=(2, 3), keepdim=True)
    alphas = squared / (2 * squared + activation_sums * squared * gradients + GRAD_CAM_PLUS_PLUS_EPS)
    alphas = torch.where(gradients != 0, alphas, torch.zeros_like(alphas))
    weights = (gradients.clamp_min(0) * alphas).sum(dim=(2, 3), keepdim=True)
    return finish_maps((weights * activations).sum(dim=1), tuple(pixels.shape[-2:]))
