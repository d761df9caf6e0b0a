"""Score-CAM (Wang et al. 2020), streamed: the masked inputs are built batch by batch, never all at once.

Each channel of the target layer, upsampled and min-max normalised, masks the *normalised* input
(as pytorch-grad-cam and the authors' code do); the target logit of each masked input, softmaxed over
channels, weights the channels. Computed exactly as pytorch-grad-cam's ``ScoreCAM`` (tests check
per-map correlation >= 0.999), with three differences in how, not what:

- Masked inputs are scored in batches built on demand (pytorch-grad-cam materialises all C of them:
  about 1.2 GB for ResNet-50 at 224x224), in inference mode, in channels-last memory layout.
- Scores stay on the model's device: one host synchronisation per image, none per masked input.
- A masked input equal to another one is scored once: min-max normalisation removes a channel's
  offset and scale, so channels whose low-resolution maps are equal after normalisation (all
  constant channels, e.g. dead ReLUs; channels active at a single position) give the same mask.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ptame.checks import check_inputs
from ptame.loading.backbones import Backbone
from ptame.methods.batches import Progress, check_batch_size, scores_in_batches
from ptame.methods.hooks import as_feature_grid, clean_pass, finish_maps
from ptame.methods.registry import register_method

INTERACTIVE_BATCH = 32  # masked copies per forward pass in the app: bounded memory on a CPU Space
MASK_EPS = 1e-8  # pytorch-grad-cam's constant in the min-max normalisation of the masks


def distinct_channel_maps(activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct min-max normalised channel maps of one image's target-layer activations.

    Args:
        activations: (C, h, w) real values.

    Returns:
        (distinct, inverse): distinct (k, h, w) in [0, 1], k <= C (a constant channel becomes all
        zeros); inverse (C,) int64 with ``distinct[inverse[c]]`` the normalised map of channel c.
    """
    flat = activations.flatten(1)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    normalised = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    distinct, inverse = torch.unique(normalised, dim=0, return_inverse=True)
    return distinct.view(-1, *activations.shape[1:]), inverse


def channel_masks(channel_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Score-CAM masks: bilinear upsampling (corners aligned, as pytorch-grad-cam), then min-max.

    Args:
        channel_maps: (n, h, w) real values.
        size: (H, W) of the input.

    Returns:
        (n, 1, H, W) in [0, 1] (a constant map becomes all zeros).
    """
    upsampled = F.interpolate(channel_maps[:, None], size=size, mode="bilinear", align_corners=True)
    low = upsampled.amin(dim=(2, 3), keepdim=True)
    high = upsampled.amax(dim=(2, 3), keepdim=True)
    return (upsampled - low) / (high - low + MASK_EPS)


@register_method(
    "scorecam",
    "Score-CAM",
    passes=lambda channels, options: channels + 1,
    streamed=True,
    default=True,
    options={"batch_size": INTERACTIVE_BATCH},
)
def score_cam(
    backbone: Backbone,
    pixels: torch.Tensor,
    classes: torch.Tensor,
    *,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Score-CAM saliency maps.

    Cost per image: one forward pass, then one per distinct channel mask (at most C: 2048 for
    ResNet-50, 512 for VGG-16, 768 for ViT-B/16), ``batch_size`` masked inputs at a time.

    Args:
        backbone: the classifier.
        pixels: (B, 3, H, W) in [0, 1].
        classes: (B,) int64, the class to explain for each image.
        batch_size: masked inputs per forward pass; memory grows linearly with it. On a CPU, 8-16 is
            as fast as 64 with a fraction of the memory (ResNet-50, one thread: 80-84 ms per masked
            input at 8-16, 96 ms at 64); on a GPU, larger batches are faster.
        progress: called as ``progress(done, total)`` with the number of masked inputs scored so
            far, first with done = 0, then after every forward pass.

    Returns:
        (B, H, W) in [0, 1].
    """
    classes = check_inputs(pixels, classes)
    check_batch_size(batch_size)
    size = tuple(pixels.shape[-2:])
    with torch.inference_mode():
        normalized, _, raw = clean_pass(backbone, pixels, classes)
        activations = as_feature_grid(backbone, raw).float()
        distinct_maps = [distinct_channel_maps(image_activations) for image_activations in activations]
        counter = Progress(sum(distinct.shape[0] for distinct, _ in distinct_maps), progress)
        maps = []
        for image, (distinct, inverse) in enumerate(distinct_maps):

            def score(start: int, stop: int, image: int = image, distinct: torch.Tensor = distinct) -> torch.Tensor:
                masks = channel_masks(distinct[start:stop], size)
                masked = (normalized[image] * masks).contiguous(memory_format=torch.channels_last)
                return backbone.model(masked)[:, classes[image]].float()

            scores = scores_in_batches(distinct.shape[0], batch_size, score, counter, pixels.device)
            weights = torch.softmax(scores[inverse], dim=0)
            maps.append(torch.einsum("c,chw->hw", weights, activations[image]))
        return finish_maps(torch.stack(maps), size)
