"""Target-layer plumbing of the CAM methods: capture a layer's output and gradient, finish a CAM into a map."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ptame.checks import check_classes_fit
from ptame.loading.backbones import Backbone
from ptame.maps import normalize_maps
from ptame.perturb import normalize


@contextmanager
def capture_target_layer(backbone: Backbone) -> Iterator[list[torch.Tensor]]:
    """Record the outputs of ``backbone.target_layer`` during forward passes run by this thread.

    The hook ignores forward passes of other threads (a demo serving several users at once runs the
    same model concurrently) and is removed on exit, also when an error is raised.

    Yields:
        A list that receives each raw output of the target layer, in order.
    """
    outputs: list[torch.Tensor] = []
    owner = threading.get_ident()

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if threading.get_ident() == owner:
            outputs.append(output)

    handle = backbone.target_layer.register_forward_hook(record)
    try:
        yield outputs
    finally:
        handle.remove()


@contextmanager
def replace_target_layer_output(backbone: Backbone, replacement: torch.Tensor) -> Iterator[None]:
    """Make ``backbone.target_layer`` return ``replacement`` in forward passes run by this thread.

    The layer still runs (its output is discarded); other threads' passes are untouched, and the
    hook is removed on exit, also when an error is raised.

    Args:
        replacement: a tensor of the layer's output shape for the batch that will be run.
    """
    owner = threading.get_ident()

    def replace(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return replacement if threading.get_ident() == owner else output

    handle = backbone.target_layer.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def clean_pass(
    backbone: Backbone, pixels: torch.Tensor, classes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward pass that gradient-free CAMs start from, recording the target layer.

    Args:
        pixels: (B, 3, H, W) in [0, 1].
        classes: (B,) int64 targets, checked against the logits' class count.

    Returns:
        (normalized (B, 3, H, W) model input, logits (B, K), the target layer's raw output).
    """
    preprocessing = backbone.preprocessing
    normalized = normalize(pixels, preprocessing.mean, preprocessing.std)
    with capture_target_layer(backbone) as outputs:
        logits = backbone.model(normalized)
    check_classes_fit(classes, logits.shape[1])
    return normalized, logits, single_output(outputs, backbone)


def single_output(outputs: list[torch.Tensor], backbone: Backbone) -> torch.Tensor:
    """The one target-layer output of a forward pass; ValueError if the layer ran 0 or several times."""
    if len(outputs) != 1:
        raise ValueError(
            f"the target layer of {backbone.name} ran {len(outputs)} times in one forward pass; "
            "CAM methods need a layer that runs once"
        )
    return outputs[0]


def as_feature_grid(backbone: Backbone, output: torch.Tensor) -> torch.Tensor:
    """A target-layer output as a (B, C, h, w) feature map (tokens reshaped to their grid for transformers)."""
    grid = backbone.reshape_transform(output) if backbone.reshape_transform is not None else output
    if grid.dim() != 4:
        raise ValueError(
            f"the target layer of {backbone.name} gives a {grid.dim()}-D output; a (B, C, h, w) map is needed "
            "(a transformer backbone needs a reshape_transform)"
        )
    return grid


def finish_maps(class_activation_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ReLU, bilinear resize to the input size, per-map min-max (as pytorch-grad-cam finishes a CAM).

    Args:
        class_activation_maps: (B, h, w) real values.
        size: (H, W) of the input.

    Returns:
        (B, H, W) float32 in [0, 1]; a map with no positive value becomes all zeros.
    """
    return normalize_maps(class_activation_maps.float().clamp_min(0), size)


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
