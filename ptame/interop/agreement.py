"""Quantus's figures beside ptame's where both compute the same quantity, on the shapes demo.

    python -m ptame.interop.agreement [--images 24] [--methods ptame,gradcam]

prints a Markdown table (docs/interop.md keeps the one measured). The shared quantities:

- pointing game: Quantus's ``PointingGame`` (a hit when *any* maximum of the map is on the mask)
  and ``ptame.metrics.pointing_game`` (the first maximum, row-major): equal unless a map's maximum
  is tied across the mask's edge. Tolerance: 0 hits apart where no map has such a tie.
- ROAD, most relevant first, noisy linear imputation: Quantus's ``ROAD`` (with
  ``road_imputation`` and ``road_percentages``, see ``ptame.interop.quantus``) and
  ``ptame.metrics.road``: the same pixels removed (ties broken differently) and the same linear
  system, but independent Gaussian noise (std 0.01), so an image on the edge of its class may
  flip. Tolerance: 1 image in 8 per fraction.
- deletion: Quantus's ``PixelFlipping`` (black baseline 0, read at whole-pixel steps by
  ``pixel_flipping_features`` and ``pixel_flipping_curve``) against
  ``ptame.metrics.deletion_insertion``'s deletion curve at steps 1..S: the same pixels removed,
  unless the step's cut falls between pixels of equal value (Grad-CAM's zeros), which the two
  break differently. Tolerance: 1e-4 of the softmax probability per point where no tie is split.
- Faithfulness correlation (Bhatt et al. 2020) has no ptame counterpart; its mean is reported.

Needs Quantus (``pip install ptame-xai[quantus]``).
"""

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptame.datasets.shapes import shapes_sample
from ptame.explainer import PTAME
from ptame.interop.quantus import (
    PixelClassifier,
    explain_func,
    numpy2_aliases,
    pixel_flipping_curve,
    pixel_flipping_features,
    road_imputation,
    road_percentages,
)
from ptame.loading.backbones import Backbone, create_backbone
from ptame.metrics import deletion_insertion, pointing_game, road

SHAPES_DEMO = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes"
ROAD_FRACTIONS = (0.1, 0.3, 0.5, 0.7)
DELETION_STEPS = 16
POINTING_TOLERANCE = 0  # hits apart, where no map's maximum is tied
ROAD_TOLERANCE = 1 / 8  # share of the images per fraction
DELETION_TOLERANCE = 1e-4  # softmax probability, per curve point, for maps without ranking ties


@dataclass(frozen=True)
class MethodAgreement:
    """One method's shared quantities by both libraries on a batch of B images.

    Attributes:
        pointing_quantus, pointing_ptame: (B,) bool hits. tied_peaks: (B,) bool, the map's
            maximum is reached at more than one pixel.
        road_quantus, road_ptame: (F,) accuracy after removing each of ``ROAD_FRACTIONS`` (MoRF).
        deletion_quantus, deletion_ptame: (B, S) class probability after each deletion step.
        split_ties: (B, S) bool, the step's cut through the map's ranking falls between equal
            values, so which of them are removed depends on how each library breaks ties.
        faithfulness_correlation: Quantus's mean Faithfulness Correlation.
    """

    pointing_quantus: np.ndarray
    pointing_ptame: np.ndarray
    tied_peaks: np.ndarray
    road_quantus: np.ndarray
    road_ptame: np.ndarray
    deletion_quantus: np.ndarray
    deletion_ptame: np.ndarray
    split_ties: np.ndarray
    faithfulness_correlation: float


def load_shapes_demo(folder: Path = SHAPES_DEMO) -> tuple[Backbone, PTAME]:
    """The shapes demo's classifier and P-TAME explainer (offline, from the checkout)."""
    backbone = create_backbone(f"local-dir:{folder / 'classifier'}")
    return backbone, PTAME.from_pretrained(folder / "explainer").eval()


def shapes_batch(count: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shapes test images ``start..start+count-1``: pixels (B, 3, 128, 128), labels (B,), masks (B, 128, 128)."""
    samples = [shapes_sample(index, "test", 128) for index in range(start, start + count)]
    return (
        torch.stack([s.pixels for s in samples]),
        torch.tensor([s.label for s in samples]),
        torch.stack([s.mask for s in samples]),
    )


def compare(
    backbone: Backbone,
    explainer: PTAME,
    pixels: torch.Tensor,
    masks: torch.Tensor,
    method: str,
    road_fractions: Sequence[float] = ROAD_FRACTIONS,
    steps: int = DELETION_STEPS,
    seed: int = 0,
) -> MethodAgreement:
    """Both libraries' shared quantities of one method's maps of the classifier's predictions."""
    import quantus

    model = PixelClassifier(backbone, explainer).eval()
    with torch.no_grad():
        classes = model(pixels).argmax(dim=1)
    x, y = pixels.numpy(), classes.numpy()
    a = explain_func(model, x, y, method=method)
    s = masks[:, None].numpy().astype(np.float32)
    maps = torch.from_numpy(a[:, 0])
    height, width = maps.shape[-2:]
    flat = a.reshape(len(a), -1)
    common = {"disable_warnings": True, "display_progressbar": False}
    with numpy2_aliases():
        pointing = np.asarray(quantus.PointingGame(**common)(model=model, x_batch=x, y_batch=y, a_batch=a, s_batch=s))
        np.random.seed(seed)
        road_metric = quantus.ROAD(
            percentages=road_percentages(road_fractions),
            perturb_func=road_imputation,
            noise=0.01,
            **common,
        )
        road_metric(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
        flipping = quantus.PixelFlipping(
            features_in_step=pixel_flipping_features(height, width, steps),
            perturb_baseline=0.0,
            **common,
        )(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
        np.random.seed(seed)
        correlation = quantus.FaithfulnessCorrelation(nr_runs=50, subset_size=height * width // 16, **common)(
            model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu"
        )
    outcomes = road(backbone, pixels, maps, classes, road_fractions, imputation="linear", seed=seed)
    curves = deletion_insertion(backbone, pixels, maps, classes, steps=steps)
    return MethodAgreement(
        pointing_quantus=pointing.astype(bool),
        pointing_ptame=pointing_game(maps, masks).numpy(),
        tied_peaks=(flat == flat.max(axis=1, keepdims=True)).sum(axis=1) > 1,
        road_quantus=np.asarray(list(road_metric.evaluation_scores.values()), dtype=np.float64),
        road_ptame=outcomes.most_relevant_first.float().mean(dim=0).numpy(),
        deletion_quantus=pixel_flipping_curve(flipping),
        deletion_ptame=curves.deletion[:, 1:].numpy().astype(np.float64),
        split_ties=split_ties(flat, steps),
        faithfulness_correlation=float(np.nanmean(correlation)),
    )


def split_ties(flat_maps: np.ndarray, steps: int) -> np.ndarray:
    """(B, S) bool: whether deletion step k's cut (the top ``round(k / S * N)`` of N pixels)
    separates pixels of equal value, for (B, N) maps."""
    ranked = -np.sort(-flat_maps, axis=1)
    pixels = flat_maps.shape[1]
    cuts = [round(step / steps * pixels) for step in range(1, steps + 1)]
    split = [ranked[:, cut - 1] == ranked[:, cut] if cut < pixels else np.zeros(len(ranked), bool) for cut in cuts]
    return np.stack(split, axis=1)


def table(results: dict[str, MethodAgreement], images: int, road_fractions: Sequence[float] = ROAD_FRACTIONS) -> str:
    """The Markdown table of ``compare``'s results, one block of rows per method."""
    lines = [
        f"Shapes demo, test images 0-{images - 1}, maps of the classifier's predictions.",
        "",
        "| method | quantity | Quantus 0.6.0 | ptame | difference | tolerance |",
        "|---|---|---:|---:|---:|---|",
    ]
    for method, result in results.items():
        hits_q, hits_p = result.pointing_quantus.mean() * 100, result.pointing_ptame.mean() * 100
        apart = int((result.pointing_quantus != result.pointing_ptame).sum())
        lines.append(
            f"| {method} | pointing game (%) | {hits_q:.1f} | {hits_p:.1f} | {apart} of {images} images apart; "
            f"{int(result.tied_peaks.sum())} maps with a tied maximum | {POINTING_TOLERANCE} images where no tie |"
        )
        for fraction, quantus_value, ptame_value in zip(road_fractions, result.road_quantus, result.road_ptame):
            lines.append(
                f"| {method} | ROAD MoRF accuracy at {fraction:.0%} | {quantus_value:.3f} | {ptame_value:.3f} | "
                f"{abs(quantus_value - ptame_value):.3f} | {ROAD_TOLERANCE:.3f} (the noise) |"
            )
        gap = np.abs(result.deletion_quantus - result.deletion_ptame)
        clean = ~result.split_ties
        clean_gap = f"{gap[clean].max():.1e}" if clean.any() else "n/a"
        lines.append(
            f"| {method} | deletion curve, mean of {gap.shape[1]} steps | {result.deletion_quantus.mean():.4f} | "
            f"{result.deletion_ptame.mean():.4f} | max {clean_gap} on the {int(clean.sum())} of {gap.size} points "
            f"whose cut splits no tie; max {gap.max():.1e} overall | {DELETION_TOLERANCE:.0e} where no tie is split |"
        )
        lines.append(
            f"| {method} | Faithfulness Correlation (Quantus only) | {result.faithfulness_correlation:.3f} | | | |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=24, help="shapes test images, from index 0")
    parser.add_argument("--methods", default="ptame,gradcam", help="comma-separated method keys")
    parser.add_argument("--model", type=Path, default=SHAPES_DEMO, help="a folder with classifier/ and explainer/")
    args = parser.parse_args(argv)
    backbone, explainer = load_shapes_demo(args.model)
    pixels, _, masks = shapes_batch(args.images)
    results = {method: compare(backbone, explainer, pixels, masks, method) for method in args.methods.split(",")}
    print(table(results, args.images))


if __name__ == "__main__":
    main()
