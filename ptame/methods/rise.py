"""RISE (Petsiuk et al. 2018): saliency as the mean of random masks weighted by the class probability.

Masks follow the authors' code: a random binary ``grid x grid`` pattern (each cell kept with
probability p) is upsampled bilinearly to ``(grid + 1) x cell`` pixels and cropped at a random shift
below one cell. As in that code, a mask multiplies the *normalised* input (a removed pixel becomes the
dataset's mean colour) and the score is the softmax probability of the class. Masks are drawn once
per call from ``seed`` (a few kB: the grids and shifts) and upsampled batch by batch, so the N masked
inputs never exist all at once; scores are accumulated on the model's device.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ptame.checks import check_classes_fit, check_inputs
from ptame.loading.backbones import Backbone
from ptame.maps import normalize_maps
from ptame.methods.batches import Progress, check_batch_size
from ptame.methods.registry import EvaluationOption, register_method
from ptame.perturb import normalize

INTERACTIVE_MASKS = 2000  # fewer than the paper's 8000: a demo answer in seconds, not minutes
INTERACTIVE_BATCH = 32  # masked inputs per forward pass in the app
PAPER_MASKS = 8000  # the P-TAME paper's evaluation protocol (ptame-method.md)


def rise_grids(
    num_masks: int, grid: int = 7, keep_probability: float = 0.5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random low-resolution patterns and shifts that define ``num_masks`` RISE masks.

    Args:
        num_masks: N.
        grid: cells per side.
        keep_probability: p, the probability that a cell is kept.
        seed: the random seed (the same seed gives the same masks on every device).

    Returns:
        (patterns, shifts): patterns (N, grid, grid) float in {0, 1}; shifts (N, 2) float in [0, 1),
        the crop offset as a fraction of one cell (rows, columns).
    """
    if num_masks < 1 or grid < 1 or not 0.0 < keep_probability <= 1.0:
        raise ValueError(
            f"RISE needs num_masks >= 1, grid >= 1 and 0 < keep_probability <= 1; got {num_masks}, {grid}, "
            f"{keep_probability}"
        )
    generator = torch.Generator().manual_seed(seed)
    patterns = (torch.rand(num_masks, grid, grid, generator=generator) < keep_probability).float()
    shifts = torch.rand(num_masks, 2, generator=generator)
    return patterns, shifts


def rise_masks(patterns: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample RISE patterns to masks of the input's size.

    Args:
        patterns: (n, grid, grid) in {0, 1}.
        shifts: (n, 2) in [0, 1), crop offsets in cells.
        size: (H, W) of the input.

    Returns:
        (n, H, W) in [0, 1]: each pattern upsampled bilinearly to ``(grid + 1) * cell`` pixels per side
        (cell = ceil(side / grid)), then cropped to (H, W) starting at ``floor(shift * cell)``.
    """
    grid = patterns.shape[-1]
    cell = (math.ceil(size[0] / grid), math.ceil(size[1] / grid))
    upsampled = F.interpolate(
        patterns[:, None], size=((grid + 1) * cell[0], (grid + 1) * cell[1]), mode="bilinear", align_corners=False
    )[:, 0]
    offsets = (shifts * torch.tensor(cell, dtype=shifts.dtype, device=shifts.device)).long().tolist()
    return torch.stack(
        [mask[top : top + size[0], left : left + size[1]] for mask, (top, left) in zip(upsampled, offsets)]
    )


@register_method(
    "rise",
    "RISE",
    passes=lambda channels, options: options["num_masks"],
    streamed=True,
    options={"num_masks": INTERACTIVE_MASKS, "batch_size": INTERACTIVE_BATCH},
    evaluation_options=(EvaluationOption("num_masks", "--rise-masks", PAPER_MASKS, "masks"),),
    seeded=True,
    evaluation_note="{num_masks} masks, 7x7 grid, p = 0.5.",
)
def rise(
    backbone: Backbone,
    pixels: torch.Tensor,
    classes: torch.Tensor,
    *,
    num_masks: int = 4000,
    grid: int = 7,
    keep_probability: float = 0.5,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """RISE saliency maps: ``sum_i P_i(class) * mask_i / (N * p)``, min-max normalised.

    Cost per image: N forward passes (the same N masks for every image).

    Args:
        backbone: the classifier.
        pixels: (B, 3, H, W) in [0, 1].
        classes: (B,) int64, the class to explain for each image.
        num_masks: N (the paper of P-TAME used 8000, RISE's authors 4000-8000).
        grid: cells per side of the random pattern.
        keep_probability: p.
        seed: the random seed of the masks.
        batch_size: masked inputs per forward pass.
        progress: called as ``progress(done, total)`` with the number of masked inputs scored so far
            (total = B * N), first with done = 0, then after every forward pass.

    Returns:
        (B, H, W) in [0, 1].
    """
    classes = check_inputs(pixels, classes)
    check_classes_fit(classes, len(backbone.class_names))
    check_batch_size(batch_size)
    patterns, shifts = rise_grids(num_masks, grid, keep_probability, seed)
    size = tuple(pixels.shape[-2:])
    counter = Progress(pixels.shape[0] * num_masks, progress)
    with torch.inference_mode():
        normalized = normalize(pixels, backbone.preprocessing.mean, backbone.preprocessing.std)
        saliency = torch.zeros(pixels.shape[0], *size, device=pixels.device)
        for start in range(0, num_masks, batch_size):
            masks = rise_masks(
                patterns[start : start + batch_size].to(pixels.device), shifts[start : start + batch_size], size
            )
            for image in range(pixels.shape[0]):
                masked = (normalized[image] * masks[:, None]).contiguous(memory_format=torch.channels_last)
                probabilities = torch.softmax(backbone.model(masked).float(), dim=1)[:, classes[image]]
                saliency[image] += torch.einsum("n,nhw->hw", probabilities, masks)
                counter.advance(masks.shape[0])
        return normalize_maps(saliency / (num_masks * keep_probability))
