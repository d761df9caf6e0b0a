"""Baseline saliency methods behind one signature: Grad-CAM, Grad-CAM++, Score-CAM, RISE.

Every method takes ``(backbone, pixels, classes, ...)``, with pixels (B, 3, H, W) in [0, 1] and
classes (B,) int64, and returns (B, H, W) maps in [0, 1] at the input's resolution. CAM methods read
``backbone.target_layer`` (for transformers through ``backbone.reshape_transform``).

Grad-CAM and Grad-CAM++ compute what pytorch-grad-cam's ``GradCAM`` and ``GradCAMPlusPlus`` compute
(tests check per-map correlation >= 0.999 against them), on the model's device and batched, with a
forward hook that only records the calling thread's forward pass and is always removed:
pytorch-grad-cam's hooks record any forward pass through the layer (a concurrent request of a demo
would corrupt the map) and its context manager swallows IndexError.
"""

from collections.abc import Callable

import torch

from ptame.backbones import Backbone
from ptame.rise import rise
from ptame.saliency import (
    as_feature_grid,
    capture_target_layer,
    check_classes_fit,
    check_inputs,
    finish_maps,
    single_output,
)
from ptame.score_cam import score_cam

GRAD_CAM_PLUS_PLUS_EPS = 1e-6  # pytorch-grad-cam's constant in the denominator of Eq. 19


def target_layer_gradients(
    backbone: Backbone, pixels: torch.Tensor, classes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target-layer activations and the gradients of each image's target logit with respect to them.

    Runs with gradients enabled whatever the caller's mode (also inside ``torch.inference_mode``).

    Args:
        backbone: the classifier.
        pixels: (B, 3, H, W) in [0, 1].
        classes: (B,) int64 targets.

    Returns:
        (activations, gradients), both (B, C, h, w) float32, detached.
    """
    with torch.inference_mode(False), torch.enable_grad(), capture_target_layer(backbone) as outputs:
        inputs = pixels.detach().clone().requires_grad_(True)  # clones are not inference tensors
        classes = classes.clone()
        logits = backbone.logits(inputs)
        check_classes_fit(classes, logits.shape[1])
        output = single_output(outputs, backbone)
        score = logits.gather(1, classes[:, None]).sum()
        (gradient,) = torch.autograd.grad(score, output)
    return as_feature_grid(backbone, output.detach()).float(), as_feature_grid(backbone, gradient).float()


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


def grad_cam_plus_plus(backbone: Backbone, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, Eq. 19 with exponential scores, as pytorch-grad-cam).

    Args:
        backbone: the classifier.
        pixels: (B, 3, H, W) in [0, 1].
        classes: (B,) int64, the class to explain for each image.

    Returns:
        (B, H, W) in [0, 1].
    """
    classes = check_inputs(pixels, classes)
    activations, gradients = target_layer_gradients(backbone, pixels, classes)
    squared = gradients**2
    activation_sums = activations.sum(dim=(2, 3), keepdim=True)
    alphas = squared / (2 * squared + activation_sums * squared * gradients + GRAD_CAM_PLUS_PLUS_EPS)
    alphas = torch.where(gradients != 0, alphas, torch.zeros_like(alphas))
    weights = (gradients.clamp_min(0) * alphas).sum(dim=(2, 3), keepdim=True)
    return finish_maps((weights * activations).sum(dim=1), tuple(pixels.shape[-2:]))


BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "gradcam": grad_cam,
    "gradcam++": grad_cam_plus_plus,
    "scorecam": score_cam,
    "rise": rise,
}
