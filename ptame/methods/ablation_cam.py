"""Ablation-CAM (Desai and Ramaswamy 2020): each channel weighted by the drop in the target's score
when that channel is ablated.

Computed as pytorch-grad-cam's ``AblationCAM`` computes it (tests check per-map correlation >= 0.999
on a CNN and a ViT): the target layer's output of the clean image is cached; for each channel k, a
forward pass in which the layer returns that output with channel k set to the ablation value gives
the target logit y_k; the weight is (y - y_k) / y with y the clean logit; the map is
ReLU(sum_k w_k A_k), resized and min-max normalised. The ablation value is 0 where the image's
target-layer output has minimum 0 (after a ReLU), else that minimum minus 1e7 (pytorch-grad-cam's
choice for layers with negative values, such as a ViT's LayerNorm). For transformers the channel
is the tokens' last axis, ablated in every token, as pytorch-grad-cam's ``AblationLayerVit`` does.

Differences in how, not what: the ablated outputs are built batch by batch, scores stay on the
model's device (one host synchronisation per image), and the ablation value is the same for every
copy in a batch (pytorch-grad-cam's layer takes the minimum again after each write, so later
copies of a batch get values 1e7 lower each, a side effect with no effect on the maps beyond
rounding).
"""

from collections.abc import Callable

import torch

from ptame.checks import check_inputs
from ptame.loading.backbones import Backbone
from ptame.methods.batches import Progress, check_batch_size, scores_in_batches
from ptame.methods.hooks import as_feature_grid, clean_pass, finish_maps, replace_target_layer_output
from ptame.methods.registry import register_method

INTERACTIVE_BATCH = 32  # ablated copies per forward pass in the app: bounded memory on a CPU Space
ABLATION_OFFSET = 1e7  # pytorch-grad-cam's ABLATION_VALUE: below the minimum for layers with negative outputs


def ablation_value(output: torch.Tensor) -> torch.Tensor:
    """The value an ablated channel takes: 0 if ``output``'s minimum is 0, else that minimum - 1e7.

    Args:
        output: one image's target-layer output, any shape.

    Returns:
        A 0-d tensor of ``output``'s dtype.
    """
    low = output.min()
    return torch.where(low == 0, low, low - ABLATION_OFFSET)


def ablated_outputs(output: torch.Tensor, channels: torch.Tensor, channel_axis: int) -> torch.Tensor:
    """Copies of one image's target-layer output, copy i with channel ``channels[i]`` ablated.

    Args:
        output: one image's raw target-layer output: (C, h, w) for a CNN, (N, C) tokens for a transformer.
        channels: (n,) int64 channel indices.
        channel_axis: the channel's axis in a batch of outputs (1 for (n, C, h, w), 2 for (n, N, C)).

    Returns:
        (n, *output.shape).
    """
    copies = output.expand(channels.shape[0], *output.shape).clone()
    copies.movedim(channel_axis, 1)[torch.arange(channels.shape[0], device=output.device), channels] = ablation_value(
        output
    )
    return copies


@register_method(
    "ablationcam",
    "Ablation-CAM",
    passes=lambda channels, options: channels + 1,
    streamed=True,
    options={"batch_size": INTERACTIVE_BATCH},
)
def ablation_cam(
    backbone: Backbone,
    pixels: torch.Tensor,
    classes: torch.Tensor,
    *,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Ablation-CAM saliency maps.

    Cost per image: one forward pass, then one per channel of the target layer (2048 for ResNet-50,
    512 for VGG-16, 768 for ViT-B/16), ``batch_size`` ablated copies at a time.

    Args:
        backbone: the classifier.
        pixels: (B, 3, H, W) in [0, 1].
        classes: (B,) int64, the class to explain for each image.
        batch_size: ablated copies per forward pass; memory grows linearly with it.
        progress: called as ``progress(done, total)`` with the number of ablated copies scored so
            far, first with done = 0, then after every forward pass.

    Returns:
        (B, H, W) in [0, 1].
    """
    classes = check_inputs(pixels, classes)
    check_batch_size(batch_size)
    with torch.inference_mode():
        normalized, logits, raw = clean_pass(backbone, pixels, classes)
        activations = as_feature_grid(backbone, raw).float()
        channel_axis = 1 if backbone.reshape_transform is None else raw.dim() - 1
        clean_scores = logits.gather(1, classes[:, None])[:, 0].float()
        channels = activations.shape[1]
        counter = Progress(channels * pixels.shape[0], progress)
        maps = []
        for image in range(pixels.shape[0]):

            def score(start: int, stop: int, image: int = image) -> torch.Tensor:
                ablated = torch.arange(start, stop, device=pixels.device)
                copies = normalized[image].expand(ablated.shape[0], *normalized.shape[1:])
                with replace_target_layer_output(backbone, ablated_outputs(raw[image], ablated, channel_axis)):
                    return backbone.model(copies)[:, classes[image]].float()

            scores = scores_in_batches(channels, batch_size, score, counter, pixels.device)
            weights = (clean_scores[image] - scores) / clean_scores[image]
            maps.append(torch.einsum("c,chw->hw", weights, activations[image]))
        return finish_maps(torch.stack(maps), tuple(pixels.shape[-2:]))
