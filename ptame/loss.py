"""The P-TAME loss: cross-entropy on the masked image + area + smoothness (method doc, step 4)."""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

AREA_EPSILON = 0.0005  # added before the power in the area term, as in the reference code


@dataclass(frozen=True)
class LossWeights:
    """Coefficients and exponents of the loss. Defaults are the method doc's.

    ce, area, smooth: weights of the three terms. area_power (p): exponent of the area term.
    smooth_power (q): exponent of the total variation. border: weight of the edge pixels in it.
    """

    ce: float = 1.5
    area: float = 2.0
    smooth: float = 0.01
    area_power: float = 0.3
    smooth_power: float = 2.0
    border: float = 0.3

    def as_dict(self) -> dict[str, float]:
        """The fields as a plain dict (for logs and model cards)."""
        return asdict(self)


def area_loss(maps: torch.Tensor, power: float) -> torch.Tensor:
    """Mean of ``(maps + 0.0005) ** power``.

    Args:
        maps: any shape, values in [0, 1].
        power: p, 0 < p <= 1 favours small, sparse maps.

    Returns:
        Scalar tensor.
    """
    return ((maps + AREA_EPSILON) ** power).mean()


def smoothness_loss(maps: torch.Tensor, power: float, border: float) -> torch.Tensor:
    """Total variation of maps with a penalty on the edge pixels.

    ``(sum |dM/dy|^q + sum |dM/dx|^q + border * (sum of q-th powers of the first and last row
    and column)) / (q * B)``; corner pixels belong to a row and a column and count twice.

    Args:
        maps: (B, C, h, w) in [0, 1].
        power: q.
        border: weight of the edge term.

    Returns:
        Scalar tensor.
    """
    batch = maps.shape[0]
    dy = (maps[:, :, 1:, :] - maps[:, :, :-1, :]).abs().pow(power).sum()
    dx = (maps[:, :, :, 1:] - maps[:, :, :, :-1]).abs().pow(power).sum()
    edges = (
        maps[:, :, 0, :].pow(power).sum()
        + maps[:, :, -1, :].pow(power).sum()
        + maps[:, :, :, 0].pow(power).sum()
        + maps[:, :, :, -1].pow(power).sum()
    )
    return (dy + dx + border * edges) / (power * batch)


def ptame_loss(
    logits_masked: torch.Tensor,
    targets: torch.Tensor,
    target_maps: torch.Tensor,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The full loss of one batch.

    Args:
        logits_masked: (b, K) classifier logits on the masked images.
        targets: (b,) int64, the classifier's predictions on the clean images.
        target_maps: (b, B, h, w) in [0, 1]: ``maps[:, batch_targets]``, every image's sigmoid
            map for every target class of the batch (B = b on one process; under several
            processes b is this process's share of the global batch of B images).
        weights: the coefficients.

    Returns:
        (loss, terms): the scalar loss, and the unweighted terms ``ce``, ``area``, ``smooth``
        as detached scalar tensors (for logs; reading them is left to the caller, so a
        training step needs no host sync).
    """
    ce = F.cross_entropy(logits_masked.float(), targets)
    maps = target_maps.float()
    area = area_loss(maps, weights.area_power)
    smooth = smoothness_loss(maps, weights.smooth_power, weights.border)
    loss = weights.ce * ce + weights.area * area + weights.smooth * smooth
    terms = {"ce": ce.detach(), "area": area.detach(), "smooth": smooth.detach()}
    return loss, terms
