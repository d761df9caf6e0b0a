"""The evaluation loop: every chosen method's maps of a batch of images, scored by every chosen metric.

One loop for every evaluation of the project: ``python -m train evaluate`` (a manifest entry or a
folder, on a world's split or a folder of images), the verdict at the end of ``python -m train
explainer`` (``train.verdict``) and the metrics.json of a world's networks (``train.worlds``). The
methods are the registry's (``ptame.methods``), called with the options they declare for
evaluations; the metrics are ``METRICS``; ``Tally`` keeps every per-image value.
"""

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ptame.bench.timing import synchronize
from ptame.datasets.world import World, WorldImages
from ptame.explainer import PTAME
from ptame.loading.backbones import Backbone
from ptame.methods import get_method, method_keys
from ptame.metrics import (
    ad_ic,
    deletion_insertion,
    energy_pointing_game,
    pointing_game,
    predicted_object_masks,
    road,
    road_auc,
)
from train.data import ImageFiles

METRICS = ("ad_ic", "road", "deletion_insertion", "pointing", "switching")
# The P-TAME paper's protocol (ptame-method.md, Evaluation protocol of the paper).
PAPER_AD_IC_PERCENTS = (100, 50, 15)
PAPER_ROAD_PERCENTS = (10, 30, 50, 70)
PAPER_ROAD_IMPUTATION = "telea"
PAPER_SUBSET = "test"
POINTING_TOLERANCE = 15 / 224  # Zhang et al.'s 15 pixels at 224x224, as a fraction of the side


@dataclass(frozen=True)
class EvaluationSettings:
    """What to compute: methods, metrics and their parameters.

    method_options: method key -> keyword -> value, for the options each method declares for
    evaluations (``ptame.methods.EvaluationOption``; RISE's masks); the others are the paper's.
    """

    methods: tuple[str, ...] = field(default_factory=method_keys)
    metrics: tuple[str, ...] = METRICS
    ad_ic_percents: tuple[int, ...] = PAPER_AD_IC_PERCENTS
    road_percents: tuple[int, ...] = PAPER_ROAD_PERCENTS
    road_imputation: str = PAPER_ROAD_IMPUTATION
    method_options: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    deletion_steps: int = 50
    seed: int = 0

    @property
    def ad_ic_fractions(self) -> tuple[float, ...]:
        """The AD/IC percentages as fractions in (0, 1]."""
        return tuple(percent / 100 for percent in self.ad_ic_percents)

    @property
    def road_fractions(self) -> tuple[float, ...]:
        """The ROAD percentages as fractions in (0, 1)."""
        return tuple(percent / 100 for percent in self.road_percents)

    def differences_from_the_paper(self) -> list[str]:
        """The settings that differ from the P-TAME paper's protocol, each with the paper's value."""
        differences = []
        if "ad_ic" in self.metrics and self.ad_ic_percents != PAPER_AD_IC_PERCENTS:
            differences.append(f"AD/IC at {_percents(self.ad_ic_percents)} (paper {_percents(PAPER_AD_IC_PERCENTS)})")
        if "road" in self.metrics and self.road_percents != PAPER_ROAD_PERCENTS:
            differences.append(f"ROAD at {_percents(self.road_percents)} (paper {_percents(PAPER_ROAD_PERCENTS)})")
        if "road" in self.metrics and self.road_imputation != PAPER_ROAD_IMPUTATION:
            differences.append(f"ROAD with {self.road_imputation} imputation (paper {PAPER_ROAD_IMPUTATION})")
        for key in self.methods:
            method, values = get_method(key), self.evaluation_values(key)
            for option in method.evaluation_options:
                value = values[option.keyword]
                if value != option.paper:
                    differences.append(f"{method.name} with {value} {option.unit} (paper {option.paper})")
        return differences

    def evaluation_values(self, method: str) -> dict[str, int]:
        """The values of a method's declared evaluation options: this evaluation's, else the paper's."""
        chosen = self.method_options.get(method, {})
        declared = get_method(method).evaluation_options
        return {option.keyword: chosen.get(option.keyword, option.paper) for option in declared}

    def options(self, method: str) -> Mapping[str, object]:
        """The keyword options a method is called with in this evaluation: its declared evaluation
        options (RISE's masks), and the seed if it is random; the rest are its function's defaults."""
        seed = {"seed": self.seed} if get_method(method).seeded else {}
        return {**self.evaluation_values(method), **seed}


@dataclass
class MethodTotals:
    """Per-image results of one method, gathered batch by batch."""

    seconds: float = 0.0
    images: int = 0
    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def add(self, name: str, per_image: torch.Tensor) -> None:
        """Append a (B,) tensor of per-image values of one figure."""
        self.values.setdefault(name, []).append(per_image.detach().float().cpu())

    def per_image(self) -> dict[str, torch.Tensor]:
        """Each figure's (images,) float32 values, in the order the images were added."""
        return {name: torch.cat(parts) for name, parts in self.values.items()}

    def means(self) -> dict[str, float]:
        """Each figure averaged over the images (ROAD: the AUCs of the mean curves)."""
        row = {"images": float(self.images), "seconds_per_image": self.seconds / max(self.images, 1)}
        for name, parts in self.values.items():
            row[name] = torch.cat(parts).nanmean().item()  # NaN: undefined on that image (class switching)
        return row


@dataclass
class Tally:
    """Everything measured on a set of images: per method, per image; and the classifier's hits.

    ``indices``: (images,) int64, the images' positions in the evaluated list, in the order of the
    per-image values (set by whoever knows which images were evaluated; None: 0, 1, 2, ...).
    """

    totals: dict[str, MethodTotals]
    correct: int = 0
    labelled: int = 0
    indices: torch.Tensor | None = None

    def rows(self) -> list[dict[str, float | str]]:
        """One row per method: the figures averaged over the images (AD, IC, pointing in percent)."""
        return [{"method": method, **totals.means()} for method, totals in self.totals.items()]

    def accuracy(self) -> float | None:
        """The classifier's top-1 accuracy in percent, or None without labels."""
        return 100.0 * self.correct / self.labelled if self.labelled else None


def merge_tallies(parts: Sequence[Tally]) -> Tally:
    """One tally of the images of several (each process's), its per-image values in image order.

    Each part's ``indices`` say which images its values belong to. Seconds, images and hits add
    up; every figure's values are put in the order of the indices, so the merged tally is the one
    a single process would have made of all the images in that order.

    Raises:
        ValueError: a part without indices, repeated images, or a figure missing on some images.
    """
    if any(part.indices is None for part in parts):
        raise ValueError("every part of a merged evaluation must say which images it holds (indices)")
    indices = torch.cat([part.indices for part in parts])  # type: ignore[misc]
    if indices.unique().numel() != indices.numel():
        raise ValueError("the parts of an evaluation overlap: an image was evaluated twice")
    order = indices.argsort()
    methods = list(dict.fromkeys(method for part in parts for method in part.totals))
    merged = Tally(totals={}, indices=indices[order])
    for method in methods:
        held = [part.totals[method] for part in parts if method in part.totals]
        totals = MethodTotals(seconds=sum(t.seconds for t in held), images=sum(t.images for t in held))
        for name in dict.fromkeys(name for t in held for name in t.values):
            values = torch.cat([t.per_image()[name] for t in held if name in t.values])
            if values.numel() != indices.numel():
                raise ValueError(f"{method}'s {name} was measured on {values.numel()} of {indices.numel()} images")
            totals.values[name] = [values[order]]
        merged.totals[method] = totals
    merged.correct = sum(part.correct for part in parts)
    merged.labelled = sum(part.labelled for part in parts)
    return merged


def method_maps(
    method: str,
    backbone: Backbone,
    explainer: PTAME | None,
    pixels: torch.Tensor,
    classes: torch.Tensor,
    settings: EvaluationSettings,
) -> torch.Tensor:
    """(B, H, W) maps in [0, 1] of one registered method for a batch."""
    chosen = get_method(method)
    options = dict(settings.options(method))
    if chosen.uses_explainer:
        options["explainer"] = explainer
    return chosen(backbone, pixels, classes, **options)


def blank_maps(maps: torch.Tensor) -> torch.Tensor:
    """(B,) float32, 1 where a map of (B, H, W) is constant: a map that ranks no pixel above another
    (a CAM with no positive evidence at its layer, zero gradients, a saturated classifier)."""
    flat = maps.flatten(1)
    return (flat.amax(dim=1) == flat.amin(dim=1)).float()


def score_batch(
    totals: MethodTotals,
    backbone: Backbone,
    pixels: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    masks: torch.Tensor | None,
    settings: EvaluationSettings,
) -> None:
    """Every chosen metric of one method's maps for a batch, added to ``totals``."""
    if "ad_ic" in settings.metrics:
        for name, values in ad_ic(backbone, pixels, maps, classes, settings.ad_ic_fractions).items():
            totals.add(name, values * (100.0 if name.startswith("ic_") else 1.0))
    if "road" in settings.metrics:
        fractions = settings.road_fractions
        curves = road(backbone, pixels, maps, classes, fractions, settings.road_imputation, settings.seed)
        for order, outcomes in (("morf", curves.most_relevant_first), ("lerf", curves.least_relevant_first)):
            totals.add(f"road_{order}_auc", road_auc(fractions, outcomes))
            for index, percent in enumerate(settings.road_percents):
                totals.add(f"road_{order}_{percent}", outcomes[:, index])
    if "deletion_insertion" in settings.metrics:
        curves = deletion_insertion(backbone, pixels, maps, classes, steps=settings.deletion_steps)
        totals.add("deletion_auc", curves.deletion_auc)
        totals.add("insertion_auc", curves.insertion_auc)
    if "pointing" in settings.metrics and masks is not None:
        totals.add("pointing_game", pointing_game(maps, masks).float() * 100)
        tolerance = round(POINTING_TOLERANCE * masks.shape[-1])
        totals.add("pointing_game_tolerant", pointing_game(maps, masks, tolerance).float() * 100)
        totals.add("energy_pointing_game", energy_pointing_game(maps, masks))


def class_switching(
    method: str,
    backbone: Backbone,
    explainer: PTAME | None,
    pixels: torch.Tensor,
    object_classes: torch.Tensor,
    object_masks: torch.Tensor,
    settings: EvaluationSettings,
) -> torch.Tensor:
    """Class switching: on an image with two or more objects of different classes, does the map of
    each object's class point at that object? One map per (image, object), as a user asks for them.

    Args:
        pixels: (B, 3, H, W) in [0, 1].
        object_classes: (B, N) int64, each object's class in the classifier's outputs, -1 past the objects.
        object_masks: (B, N, H, W) bool, each object's mask.

    Returns:
        (B,) float32: the share of an image's objects whose class's map has its maximum on the
        object, in percent; NaN for an image with fewer than two objects.
    """
    present = object_classes >= 0
    images, slots = torch.nonzero(present & (present.sum(dim=1, keepdim=True) >= 2), as_tuple=True)
    result = torch.full((pixels.shape[0],), float("nan"), device=pixels.device)
    if images.numel() == 0:
        return result
    maps = method_maps(method, backbone, explainer, pixels[images], object_classes[images, slots], settings)
    hits = pointing_game(maps.float(), object_masks[images, slots]).float() * 100
    totals = torch.zeros_like(result).index_add_(0, images, hits)
    counts = torch.zeros_like(result).index_add_(0, images, torch.ones_like(hits))
    return torch.where(counts > 0, totals / counts.clamp_min(1), result)


def as_objects(labels: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's ground truth as objects: labels (B,) and masks (B, H, W) of one object per image,
    or already (B, N) and (B, N, H, W), -> (B, N) and (B, N, H, W)."""
    if labels.dim() == 1:
        return labels[:, None], masks[:, None]
    return labels, masks


def evaluate_tally(
    backbone: Backbone,
    explainer: PTAME | None,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    settings: EvaluationSettings,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
    amp: bool = False,
) -> Tally:
    """Run every method and metric over batches of images, keeping every per-image value.

    Args:
        backbone: the classifier, on ``device``.
        explainer: its P-TAME explainer, on ``device`` (None: no method that reads one).
        batches: (pixels (B, 3, H, W) in [0, 1], labels (B,) int64 or None, masks (B, H, W) bool or
            None), or the objects of each image: labels (B, N) (the classifier's class of each
            object, -1 past the objects) and masks (B, N, H, W). Masks enable the pointing games
            (against the object of the predicted class, or all objects when none is of that class)
            and class switching (images of two or more objects); labels the classifier's accuracy
            (the prediction is the class of one of the objects).
        settings: methods, metrics and their parameters.
        device: where to compute.
        progress: called with the number of images of each finished batch.
        amp: compute under bf16 autocast (predictions, maps and metrics; the maps are scored as
            float32), as the official code does.

    Returns:
        The tally: per method, each figure's per-image values (AD, IC, the pointing game and blank maps in
        percent) and the seconds spent on its maps; the classifier's hits on labelled images.
    """
    unknown = sorted(set(settings.methods) - set(method_keys())) + sorted(set(settings.metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown methods or metrics {unknown}; methods: {method_keys()}, metrics: {METRICS}")
    tally = Tally(totals={method: MethodTotals() for method in settings.methods})
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)
    for pixels, labels, masks_given in batches:
        pixels = pixels.to(device)
        with torch.inference_mode(), autocast:
            classes = backbone.logits(pixels).argmax(dim=1)
        object_classes, object_masks, masks = None, None, None
        if labels is not None:
            object_classes = (labels if labels.dim() > 1 else labels[:, None]).to(device)
            tally.correct += int((object_classes == classes[:, None]).any(dim=1).sum())
            tally.labelled += pixels.shape[0]
        if masks_given is not None and labels is not None:
            object_classes, object_masks = as_objects(labels.to(device), masks_given.to(device))
            masks = predicted_object_masks(classes, object_classes, object_masks)
        for method in settings.methods:
            synchronize(device)
            start = time.perf_counter()
            with autocast:
                maps = method_maps(method, backbone, explainer, pixels, classes, settings)
            synchronize(device)
            totals = tally.totals[method]
            totals.seconds += time.perf_counter() - start
            totals.images += pixels.shape[0]
            totals.add("blank_maps", blank_maps(maps) * 100.0)
            with autocast:
                score_batch(totals, backbone, pixels, maps.float(), classes, masks, settings)
                if "switching" in settings.metrics and object_masks is not None and object_masks.shape[1] > 1:
                    switching = class_switching(
                        method, backbone, explainer, pixels, object_classes, object_masks, settings
                    )
                    totals.add("class_switching", switching)
        if progress is not None:
            progress(pixels.shape[0])
    return tally


def evaluate(*args: object, **kwargs: object) -> tuple[list[dict[str, float | str]], float | None]:
    """Run every method and metric over batches of images (``evaluate_tally``'s arguments).

    Returns:
        (rows, accuracy): one row per method (figures averaged over the images; AD, IC and the
        pointing game in percent), and the classifier's top-1 accuracy in percent (None without labels).
    """
    tally = evaluate_tally(*args, **kwargs)  # type: ignore[arg-type]
    return tally.rows(), tally.accuracy()


def world_batches(
    world: World,
    split: str,
    count: int,
    size: int | None,
    batch_size: int,
    indices: Sequence[int] | None = None,
    start: int = 0,
    workers: int = 0,
) -> DataLoader:
    """``count`` consecutive images of a world's split from index ``start`` (only ``indices`` of
    them, if given), with labels and ground-truth masks, in order, in batches of ``batch_size``,
    generated by ``workers`` processes.

    Yields (pixels (B, 3, S, S) in [0, 1], labels (B,) int64, masks (B, S, S) bool).
    """
    dataset = WorldImages(world, split, count, size, start)
    chosen = dataset if indices is None else Subset(dataset, list(indices))
    return DataLoader(chosen, batch_size=batch_size, shuffle=False, num_workers=workers)


class WorldObjects(Dataset):
    """Images of a world's split with all their objects, for evaluations.

    Items: (pixels (3, S, S) float32 in [0, 1], classes (N,) int64: each object's class in the
    world's classifiers (``World.class_index``), -1 past the image's objects, masks (N, S, S) bool),
    N the world's ``max_objects``; an object hidden entirely (an empty mask) is left out.
    """

    def __init__(self, images: WorldImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = self.images
        if not 0 <= index < len(images):
            raise IndexError(f"index {index} out of range for {len(images)} images")
        world = images.world
        sample = world.sample(images.start + index, images.split, images.size)
        slots = world.max_objects
        classes = torch.full((slots,), -1, dtype=torch.int64)
        masks = torch.zeros(slots, *sample.mask.shape, dtype=torch.bool)
        visible = [(label, mask) for label, mask in sample.objects if mask.any()]
        for slot, (label, mask) in enumerate(visible[:slots]):
            classes[slot], masks[slot] = world.class_index(label), mask
        return sample.pixels, classes, masks


def world_object_batches(
    world: World, split: str, count: int, size: int | None, batch_size: int, indices: Sequence[int] | None = None
) -> DataLoader:
    """``count`` consecutive images of a world's split (only ``indices`` of them, if given), with
    every object's class and mask (``WorldObjects``), in order, in batches of ``batch_size``.

    Yields (pixels (B, 3, S, S) in [0, 1], classes (B, N) int64, masks (B, N, S, S) bool).
    """
    dataset = WorldObjects(WorldImages(world, split, count, size))
    chosen = dataset if indices is None else Subset(dataset, list(indices))
    return DataLoader(chosen, batch_size=batch_size, shuffle=False)


def folder_batches(paths: Sequence[Path], backbone: Backbone, batch_size: int) -> Iterator[tuple]:
    """Images from files through the classifier's preprocessing; no labels, no masks."""
    for pixels in DataLoader(ImageFiles(paths, backbone.preprocessing.transform()), batch_size=batch_size):
        yield pixels, None, None


def _percents(percents: Sequence[int]) -> str:
    return "/".join(str(percent) for percent in percents) + "%"
