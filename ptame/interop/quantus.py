"""Quantus (Hedström et al. 2023) on ptame's classifiers and maps.

Quantus calls a model on the images it is given and an ``explain_func(model, inputs, targets,
**kwargs)`` for the maps of perturbed or randomised inputs. ptame's images are pixels in [0, 1]
and its classifiers normalise their own input (``Backbone.logits``); ``PixelClassifier`` is that
as a plain ``nn.Module``, so Quantus's perturbations (a black baseline, noise, imputation) act on
pixels, as ptame's metrics do. ``explain_func`` gives any registered method's maps, P-TAME
included::

    import quantus
    from ptame.interop.quantus import PixelClassifier, explain_func

    model = PixelClassifier(backbone, explainer=explainer).eval()
    maps = explain_func(model, x_batch, y_batch, method="ptame")  # (B, 1, H, W) numpy in [0, 1]
    scores = quantus.PointingGame()(model=model, x_batch=x_batch, y_batch=y_batch, a_batch=maps, s_batch=masks)
    scores = quantus.FaithfulnessCorrelation()(
        model=model, x_batch=x_batch, y_batch=y_batch, explain_func=explain_func,
        explain_func_kwargs={"method": "gradcam"},
    )

Quantus 0.6.0 (the newest release) and numpy 2: ``np.trapz`` and ``np.NaN`` are gone from numpy
2.4, and Quantus still calls them for the areas under its curves (``PixelFlipping``'s
``return_auc_per_sample``, ``get_auc_score``, IROF, Selectivity, RegionPerturbation) and in
``Continuity``; ``numpy2_aliases()`` restores the two names while a metric runs. Quantus 0.6.0's
``ROAD`` and ``PixelFlipping`` broadcast a (B, 1, H, W) map over the image's C channels and rank
the C * H * W values: ``PixelFlipping``'s step removes ``features_in_step`` channel values (so
C * H * W / ``features_in_step`` steps in all), and ``ROAD`` hands pixel indices up to C * H * W to
an imputation that expects H * W, an IndexError on colour images. ``road_imputation`` and
``road_percentages`` make Quantus's ROAD remove the fraction of pixels it is asked for;
``pixel_flipping_features`` and ``pixel_flipping_curve`` read ``PixelFlipping`` as a deletion
curve of whole pixels.
"""

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ptame.loading.backbones import Backbone
from ptame.methods import get_method
from ptame.perturb import normalize


class PixelClassifier(nn.Module):
    """A ptame classifier as a plain ``nn.Module`` on pixels: (B, 3, H, W) in [0, 1] -> (B, K) logits.

    It normalises inside (``Backbone.logits``), so that Quantus, captum or any tool that calls a
    module on images perturbs pixels. The classifier is its only submodule: Quantus's model
    randomisation tests randomise it and nothing else. The P-TAME explainer, if given, is kept
    beside it (not a submodule, so it is neither randomised nor moved by ``.to``): P-TAME reads
    the auxiliary network's features, not the classifier's, and gives the same maps for a
    randomised classifier until it is trained again.

    Args:
        backbone: the classifier (``ptame.create_backbone``, or a loaded model's ``backbone``).
        explainer: its trained ``ptame.PTAME``, for ``explain_func(..., method="ptame")``.
    """

    def __init__(self, backbone: Backbone, explainer: nn.Module | None = None) -> None:
        super().__init__()
        self.classifier = backbone.model
        self.name = backbone.name
        self.preprocessing = backbone.preprocessing
        self.class_names = list(backbone.class_names)
        self.reshape_transform = backbone.reshape_transform
        self.target_layer_name = _module_name(backbone.model, backbone.target_layer)
        self.__dict__["explainer"] = explainer  # beside the module, not in it

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> (B, K) logits."""
        return self.classifier(normalize(pixels, self.preprocessing.mean, self.preprocessing.std))

    def backbone(self) -> Backbone:
        """This module's classifier as a ``ptame.Backbone`` (its target layer looked up by name, so a
        copy of the module, as Quantus's randomisation makes, gives the copy's layer)."""
        return Backbone(
            name=self.name,
            model=self.classifier,
            preprocessing=self.preprocessing,
            target_layer=self.classifier.get_submodule(self.target_layer_name),
            reshape_transform=self.reshape_transform,
            class_names=self.class_names,
        )


def _module_name(model: nn.Module, layer: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError("the backbone's target layer is not a module of its model")


def explain_func(
    model: PixelClassifier | Backbone,
    inputs: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor | Sequence[int],
    method: str = "ptame",
    explainer: nn.Module | None = None,
    device: str | torch.device | None = None,
    **options: object,
) -> np.ndarray:
    """A registered method's maps in Quantus's layout: ``explain_func`` for any Quantus metric.

    Args:
        model: a ``PixelClassifier`` (what Quantus passes back: the model given to the metric) or a
            ``Backbone``.
        inputs: (B, 3, H, W) pixels in [0, 1], numpy or torch.
        targets: (B,) class indices.
        method: a key of ``ptame.methods.METHODS`` ("ptame", "gradcam", "scorecam", "rise", or a
            plug-in's, such as "captum-gradcam").
        explainer: the P-TAME explainer, for methods that read one (default: the model's).
        device: what Quantus passes along; the maps are computed where the model's parameters are.
        options: the method's keyword options (``masks=500`` for RISE, ...).

    Returns:
        (B, 1, H, W) float32 numpy in [0, 1].

    Raises:
        ValueError: an unknown method, wrong shapes, or a method that needs an explainer without one.
    """
    chosen = get_method(method)
    backbone = model.backbone() if isinstance(model, PixelClassifier) else model
    if not isinstance(backbone, Backbone):
        raise ValueError(
            f"model must be a ptame.interop.quantus.PixelClassifier or a ptame.Backbone, not {type(model)}"
        )
    device = next(backbone.model.parameters()).device
    pixels = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    pixels = pixels.to(device=device, dtype=torch.float32)
    classes = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets, device=device)
    if chosen.uses_explainer:
        explainer = explainer if explainer is not None else getattr(model, "explainer", None)
        if explainer is None:
            raise ValueError(
                f"{chosen.name} needs the classifier's P-TAME explainer (PixelClassifier(backbone, explainer))"
            )
        options = {"explainer": explainer, **options}
    maps = chosen(backbone, pixels, classes.long().reshape(-1), **options)
    return maps.detach().float().cpu().numpy()[:, None]


@contextlib.contextmanager
def numpy2_aliases() -> Iterator[None]:
    """Restore ``np.trapz`` and ``np.NaN`` (removed by numpy 2.4, still called by Quantus 0.6.0)
    while the block runs; names numpy still has are left alone."""
    added = {name: value for name, value in (("trapz", np.trapezoid), ("NaN", np.nan)) if not hasattr(np, name)}
    for name, value in added.items():
        setattr(np, name, value)
    try:
        yield
    finally:
        for name in added:
            delattr(np, name)


def road_percentages(fractions: Sequence[float], channels: int = 3) -> list[float]:
    """The ``percentages`` of Quantus 0.6.0's ``ROAD`` that remove ``fractions`` of the pixels.

    Quantus ranks the map broadcast over the image's ``channels`` and takes
    ``int(H * W * percentage / 100)`` of those C * H * W values, whose C copies of each pixel are
    equal and so adjacent: a percentage of ``C * 100 * fraction`` takes every channel of the
    top ``fraction`` of the pixels (``road_imputation`` turns them back into pixels).
    """
    return [channels * 100.0 * fraction for fraction in fractions]


def road_imputation(arr: np.ndarray, indices: np.ndarray, noise: float = 0.01, **kwargs: object) -> np.ndarray:
    """Quantus's noisy linear imputation of the pixels that Quantus 0.6.0's ``ROAD`` names by their
    (C, H, W) positions: ``ROAD(perturb_func=road_imputation, percentages=road_percentages(...))``.

    Args:
        arr: (C, H, W) image.
        indices: flat indices into (C, H, W); each names pixel ``index % (H * W)``.
        noise: standard deviation of the Gaussian noise added to the imputed pixels (ROAD's 0.01).
    """
    from quantus.functions.perturb_func import noisy_linear_imputation

    pixels = np.unique(np.asarray(indices) % (arr.shape[-2] * arr.shape[-1]))
    return noisy_linear_imputation(arr, pixels, noise=noise)


def pixel_flipping_features(height: int, width: int, steps: int) -> int:
    """``features_in_step`` of Quantus's ``PixelFlipping`` for a deletion curve of ``steps`` steps of
    whole pixels, read with ``pixel_flipping_curve``.

    Quantus 0.6.0 requires ``features_in_step`` to divide H * W but removes that many of the
    C * H * W channel values per step, so it takes C * ``steps`` steps; after each C-th, every
    channel of the top ``k / steps`` of the pixels is removed.

    Raises:
        ValueError: ``steps`` does not divide the pixel count.
    """
    if steps < 1 or (height * width) % steps:
        raise ValueError(f"steps must divide the {height * width} pixels, got {steps}")
    return height * width // steps


def pixel_flipping_curve(curve: np.ndarray | Sequence[Sequence[float]], channels: int = 3) -> np.ndarray:
    """Quantus's ``PixelFlipping`` curves, (B, C * S), at the steps that end on whole pixels: (B, S),
    point k the class probability with the top ``k / S`` of the pixels removed (k = 1..S)."""
    return np.asarray(curve, dtype=np.float64)[:, channels - 1 :: channels]
