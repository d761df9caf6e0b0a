"""captum's attributions as ptame methods: in the app, the command line and the evaluation, beside the built-ins.

``python app.py`` and ``python -m ptame explain`` offer them whenever captum is installed
(``ptame.interop.plugins``); in Python, ``ptame.interop.captum.register()`` adds them before
``python -m train evaluate`` or your own code reads the registry. Two methods, each a plain map function
registered with ``ptame.methods.register_method`` as a built-in is (the registry needs no change
for a third-party method):

- ``captum-gradcam``, "Grad-CAM (captum)": captum's ``LayerGradCam`` on the backbone's target
  layer, finished as ptame finishes a CAM (ReLU, bilinear resize, min-max). It computes the same
  map as ``ptame.grad_cam`` (tests compare them).
- ``captum-occlusion``, "Occlusion (captum)" (Zeiler and Fergus 2014): captum's ``Occlusion``,
  black squares of 1/``grid`` of the image's side slid by half their side; a pixel's score is the
  mean drop of the class's logit when a square covering it is blacked out. About
  ``(2 * grid - 1) ** 2`` forward passes per image: streamed, in the app's slow lane.

Needs captum (``pip install ptame-xai[captum]``).
"""

import math
from collections.abc import Callable

import torch
from captum.attr import LayerGradCam, Occlusion

from ptame.checks import check_classes_fit, check_inputs
from ptame.interop.maps import as_maps
from ptame.loading.backbones import Backbone
from ptame.methods import METHODS, register_method, unregister_method

GRAD_CAM_KEY = "captum-gradcam"
OCCLUSION_KEY = "captum-occlusion"
OCCLUSION_GRID = 8  # squares of 1/8 of the side: 15 x 15 positions, 225 passes per image
OCCLUSION_BATCH = 32  # occluded copies per forward pass

Progress = Callable[[int, int], None]


def layer_grad_cam(backbone: Backbone, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """captum's ``LayerGradCam`` on ``backbone.target_layer``, as a ptame map.

    Args:
        backbone: a CNN classifier (captum's LayerGradCam averages gradients over a (B, C, h, w)
            layer output; a transformer's tokens are not such a grid).
        pixels: (B, 3, H, W) in [0, 1].
        classes: (B,) int64.

    Returns:
        (B, H, W) in [0, 1]: captum's attribution, ReLU, resized bilinearly to the input, min-max.

    Raises:
        ValueError: a transformer backbone (``reshape_transform``), or bad inputs.
    """
    classes = check_inputs(pixels, classes)
    check_classes_fit(classes, len(backbone.class_names))
    if backbone.reshape_transform is not None:
        raise ValueError("captum's LayerGradCam needs a CNN layer; this backbone's target layer gives tokens")
    with torch.inference_mode(False), torch.enable_grad():
        inputs = pixels.detach().clone().requires_grad_(True)
        attributions = LayerGradCam(backbone.logits, backbone.target_layer).attribute(inputs, target=classes.clone())
    return as_maps(attributions.detach(), tuple(pixels.shape[-2:]))


def occlusion_passes(channels: int, options: dict[str, object]) -> float:
    """Forward passes per image of ``occlusion`` with ``grid`` squares per side: (2 * grid - 1)^2 + 1."""
    grid = int(options.get("grid", OCCLUSION_GRID))
    return (2 * grid - 1) ** 2 + 1


def occlusion(
    backbone: Backbone,
    pixels: torch.Tensor,
    classes: torch.Tensor,
    *,
    grid: int = OCCLUSION_GRID,
    batch_size: int = OCCLUSION_BATCH,
    progress: Progress | None = None,
) -> torch.Tensor:
    """captum's ``Occlusion`` with black squares, as a ptame map.

    Args:
        backbone: the classifier.
        pixels: (B, 3, H, W) in [0, 1].
        classes: (B,) int64.
        grid: the square's side is ``ceil(side / grid)`` pixels, slid by half of it.
        batch_size: occluded copies per forward pass.
        progress: called with (forward passes done, total).

    Returns:
        (B, H, W) in [0, 1]: the mean logit drop when a square covering the pixel is blacked
        out, negative drops set to 0, min-max normalised.
    """
    classes = check_inputs(pixels, classes)
    check_classes_fit(classes, len(backbone.class_names))
    if grid < 1 or batch_size < 1:
        raise ValueError(f"grid and batch_size must be >= 1, got {grid} and {batch_size}")
    height, width = pixels.shape[-2:]
    window = (math.ceil(height / grid), math.ceil(width / grid))
    stride = (max(1, window[0] // 2), max(1, window[1] // 2))
    positions = math.prod(math.ceil((side - w) / s) + 1 for side, w, s in zip((height, width), window, stride))
    copies = max(1, batch_size // pixels.shape[0])
    total = 1 + math.ceil(positions / copies)
    done = 0

    def forward(images: torch.Tensor) -> torch.Tensor:
        nonlocal done
        logits = backbone.logits(images)
        done += 1
        if progress is not None:
            progress(min(done, total), total)
        return logits

    with torch.inference_mode():
        attributions = Occlusion(forward).attribute(
            pixels,
            sliding_window_shapes=(3, *window),
            strides=(3, *stride),
            target=classes,
            baselines=0.0,
            perturbations_per_eval=copies,
        )
    return as_maps(attributions)


METHOD_DECLARATIONS: dict[str, tuple[str, Callable[..., torch.Tensor], dict[str, object]]] = {
    GRAD_CAM_KEY: ("Grad-CAM (captum)", layer_grad_cam, {"passes": lambda channels, options: 2}),
    OCCLUSION_KEY: ("Occlusion (captum)", occlusion, {"passes": occlusion_passes, "streamed": True}),
}


def register() -> tuple[str, ...]:
    """Register captum's methods (those not registered yet) at the end of the display order.

    Returns:
        Their keys.
    """
    for key, (name, function, declaration) in METHOD_DECLARATIONS.items():
        if key not in METHODS:
            register_method(key, name, **declaration)(function)
    return tuple(METHOD_DECLARATIONS)


def unregister() -> None:
    """Remove captum's methods from the registry."""
    for key in METHOD_DECLARATIONS:
        unregister_method(key)
