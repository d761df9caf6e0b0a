"""Evaluate P-TAME and the baselines: every method x every metric on a dataset, as CSV and Markdown.

    python -m train evaluate --checkpoint checkpoints/shapes --data shapes --images 500 --out checkpoints/shapes
    python -m train evaluate --model resnet50 --data folder --images-root IMAGENET/val --out DIR
    torchrun --nproc-per-node 8 -m train evaluate --model resnet50 --device cuda ... --out DIR

The classifier and its P-TAME explainer come from a manifest entry (``--model KEY``) or a folder with
classifier/ and explainer/ (``--checkpoint``). Images: the shapes world's test split (with
ground-truth masks, so the pointing games are scored too) or a folder of images: ImageNet val, of
which ``--subset test`` (the default) and ``val`` are the P-TAME paper's fixed 2000-image subsets
(train/imagenet_val.py; a flat val folder needs ``--labels``), ``all`` every image of any folder.

The defaults are the paper's protocol: every map explains the classifier's own prediction; AD/IC
at 100/50/15%; ROAD MoRF/LeRF at 10/30/50/70% with OpenCV Telea inpainting; RISE with 8000 masks.
Every choice has a flag, and the report's first lines say which protocol and settings made it.
``--amp`` computes under bf16 autocast, as the official code does (default: float32).

Before it starts, the command prints the expected cost: each method's classifier passes per image
(its map's, from the method registry, and its metrics'), and the time that makes at the speed of one
timed batch (``--dry-run`` stops there); after the first batch, the time the rest will take.

Under torchrun the images are shared by whole batches, in turn (process r takes batches r, r + N,
...): every image is evaluated in the batch one process would put it in, so every per-image value is
the one process's; rank 0 gathers them in image order and writes the one report.
Writes OUT/evaluation.csv (every figure), OUT/evaluation.md (the table) and
OUT/evaluation-per-image.csv (every figure of every image and method), and prints the table.
"""

import argparse
import csv
import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ptame.bench.timing import synchronize
from ptame.datasets.shapes import SPLIT_SEEDS, ShapesDataset
from ptame.files import atomic_write_text
from ptame.methods import get_method, method_keys
from ptame.methods.hooks import as_feature_grid, capture_target_layer, single_output
from ptame.metrics import ad_ic, deletion_insertion, energy_pointing_game, pointing_game, road, road_auc
from ptame.serving.manifest import DEFAULT_MANIFEST, LoadedModel, ModelEntry, load_manifest, load_model
from train.data import ImageFiles, image_files
from train.distributed import Processes, batches_of_rank, gather_to_main, start_processes, stop_processes
from train.imagenet_val import SUBSET_NAMES, paper_subset

METRICS = ("ad_ic", "road", "deletion_insertion", "pointing")
# The P-TAME paper's protocol (ptame-method.md, Evaluation protocol of the paper).
PAPER_AD_IC_PERCENTS = (100, 50, 15)
PAPER_ROAD_PERCENTS = (10, 30, 50, 70)
PAPER_ROAD_IMPUTATION = "telea"
PAPER_RISE_MASKS = 8000
PAPER_SUBSET = "test"
POINTING_TOLERANCE = 15 / 224  # Zhang et al.'s 15 pixels at 224x224, as a fraction of the side

# Markdown columns: (CSV column, header, decimals); arrows say which direction is better. The AD/IC
# columns, one pair per percentage of the settings, come after "s / image".
FIRST_MARKDOWN_COLUMN = ("seconds_per_image", "s / image", 3)
MARKDOWN_COLUMNS = (
    ("road_morf_auc", "ROAD MoRF ↓", 3),
    ("road_lerf_auc", "ROAD LeRF ↑", 3),
    ("deletion_auc", "Deletion ↓", 3),
    ("insertion_auc", "Insertion ↑", 3),
    ("pointing_game", "Pointing ↑", 2),
    ("pointing_game_tolerant", "Pointing ±15/224 ↑", 2),
    ("energy_pointing_game", "Energy PG ↑", 3),
    ("blank_maps", "Blank maps % ↓", 1),
)


@dataclass(frozen=True)
class EvaluationSettings:
    """What to compute: methods, metrics and their parameters."""

    methods: tuple[str, ...] = field(default_factory=method_keys)
    metrics: tuple[str, ...] = METRICS
    ad_ic_percents: tuple[int, ...] = PAPER_AD_IC_PERCENTS
    road_percents: tuple[int, ...] = PAPER_ROAD_PERCENTS
    road_imputation: str = PAPER_ROAD_IMPUTATION
    rise_masks: int = PAPER_RISE_MASKS
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
        if "rise" in self.methods and self.rise_masks != PAPER_RISE_MASKS:
            differences.append(f"RISE with {self.rise_masks} masks (paper {PAPER_RISE_MASKS})")
        return differences

    def options(self, method: str) -> Mapping[str, object]:
        """The keyword options a method is called with in this evaluation (RISE: its masks and seed;
        every other method its function's defaults)."""
        return {"num_masks": self.rise_masks, "seed": self.seed} if method == "rise" else {}


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
            row[name] = torch.cat(parts).mean().item()
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
    method: str, model: LoadedModel, pixels: torch.Tensor, classes: torch.Tensor, settings: EvaluationSettings
) -> torch.Tensor:
    """(B, H, W) maps in [0, 1] of one registered method for a batch."""
    chosen = get_method(method)
    options = dict(settings.options(method))
    if chosen.uses_explainer:
        options["explainer"] = model.explainer
    return chosen(model.backbone, pixels, classes, **options)


def blank_maps(maps: torch.Tensor) -> torch.Tensor:
    """(B,) float32, 1 where a map of (B, H, W) is constant: a map that ranks no pixel above another
    (a CAM with no positive evidence at its layer, zero gradients, a saturated classifier)."""
    flat = maps.flatten(1)
    return (flat.amax(dim=1) == flat.amin(dim=1)).float()


def score_batch(
    totals: MethodTotals,
    model: LoadedModel,
    pixels: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    masks: torch.Tensor | None,
    settings: EvaluationSettings,
) -> None:
    """Every chosen metric of one method's maps for a batch, added to ``totals``."""
    backbone = model.backbone
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


def evaluate_tally(
    model: LoadedModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    settings: EvaluationSettings,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
    amp: bool = False,
) -> Tally:
    """Run every method and metric over batches of images, keeping every per-image value.

    Args:
        model: the classifier and its explainer, on ``device``.
        batches: (pixels (B, 3, H, W) in [0, 1], labels (B,) int64 or None, masks (B, H, W) bool or
            None); masks enable the pointing games, labels the classifier's accuracy.
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
    for pixels, labels, masks in batches:
        pixels = pixels.to(device)
        masks = masks.to(device) if masks is not None else None
        with torch.inference_mode(), autocast:
            classes = model.backbone.logits(pixels).argmax(dim=1)
        if labels is not None:
            tally.correct += int((classes.cpu() == labels).sum())
            tally.labelled += labels.numel()
        for method in settings.methods:
            synchronize(device)
            start = time.perf_counter()
            with autocast:
                maps = method_maps(method, model, pixels, classes, settings)
            synchronize(device)
            totals = tally.totals[method]
            totals.seconds += time.perf_counter() - start
            totals.images += pixels.shape[0]
            totals.add("blank_maps", blank_maps(maps) * 100.0)
            with autocast:
                score_batch(totals, model, pixels, maps.float(), classes, masks, settings)
        if progress is not None:
            progress(pixels.shape[0])
    return tally


def evaluate(
    model: LoadedModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    settings: EvaluationSettings,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, float | str]], float | None]:
    """Run every method and metric over batches of images (see ``evaluate_tally``).

    Returns:
        (rows, accuracy): one row per method (figures averaged over the images; AD, IC and the
        pointing game in percent), and the classifier's top-1 accuracy in percent (None without labels).
    """
    tally = evaluate_tally(model, batches, settings, device, progress)
    return tally.rows(), tally.accuracy()


def shapes_batches(
    split: str, count: int, size: int, batch_size: int, indices: Sequence[int] | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The first ``count`` images of a shapes split (only ``indices`` of them, if given), with
    labels and ground-truth masks, in batches of ``batch_size``."""
    dataset = ShapesDataset(split, count, size)
    yield from DataLoader(dataset if indices is None else Subset(dataset, list(indices)), batch_size=batch_size)


def folder_batches(paths: Sequence[Path], model: LoadedModel, batch_size: int) -> Iterator[tuple]:
    """Images from files through the classifier's preprocessing; no labels, no masks."""
    for pixels in DataLoader(ImageFiles(paths, model.backbone.preprocessing.transform()), batch_size=batch_size):
        yield pixels, None, None


def metric_passes(settings: EvaluationSettings) -> int:
    """The classifier's forward passes per image that the chosen metrics take for one method's map:
    AD/IC the clean image and one per percentage, ROAD one per percentage and order, deletion and
    insertion one per step and end point each, the pointing games none."""
    passes = 0
    if "ad_ic" in settings.metrics:
        passes += 1 + len(settings.ad_ic_percents)
    if "road" in settings.metrics:
        passes += 2 * len(settings.road_percents)
    if "deletion_insertion" in settings.metrics:
        passes += 2 * (settings.deletion_steps + 1)
    return passes


def map_passes(settings: EvaluationSettings, channels: int) -> dict[str, float]:
    """Each method's classifier passes per image for its map, from the registry (``Method.passes``)
    with this evaluation's options; ``channels``: the CAM target layer's (Score-CAM's masks)."""
    passes = {}
    for key in settings.methods:
        method = get_method(key)
        passes[key] = method.passes(channels, {**method.options, **settings.options(key)})
    return passes


def cam_channels(model: LoadedModel, pixels: torch.Tensor) -> int:
    """The channels of the classifier's CAM target layer, from one pass over ``pixels`` (0 if the
    layer's output is not a feature grid: the CAM methods will say why when they run)."""
    with torch.inference_mode(), capture_target_layer(model.backbone) as outputs:
        model.backbone.logits(pixels)
    try:
        return int(as_feature_grid(model.backbone, single_output(outputs, model.backbone)).shape[1])
    except ValueError:
        return 0


def seconds_per_pass(model: LoadedModel, pixels: torch.Tensor, device: torch.device, amp: bool) -> float:
    """Seconds per image of one forward pass of the classifier, timed on a batch (after a warm-up pass)."""
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)
    with torch.inference_mode(), autocast:
        model.backbone.logits(pixels)
        synchronize(device)
        start = time.perf_counter()
        model.backbone.logits(pixels)
        synchronize(device)
    return (time.perf_counter() - start) / pixels.shape[0]


def duration(seconds: float) -> str:
    """A duration for people: "0.4 s", "42 s", "3.5 min", "2.1 h" or "3.3 days"."""
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size if unit == "days" else seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def cost_lines(
    settings: EvaluationSettings, channels: int, images: int, processes: int, pass_seconds: float, device: str
) -> list[str]:
    """The expected cost of an evaluation, printed before it starts.

    Args:
        settings: methods, metrics and their parameters.
        channels: the classifier's CAM target layer's channels (Score-CAM, Ablation-CAM).
        images: images evaluated in all.
        processes: processes sharing them.
        pass_seconds: seconds per image of one classifier pass (``seconds_per_pass``).
        device: where the pass was timed.

    Returns:
        Two lines: the passes per image of each method (its map, then its metrics) and in all; the
        time that makes at ``pass_seconds`` per pass, in all and per process.
    """
    metrics = metric_passes(settings)
    methods = map_passes(settings, channels)
    per_image = 1 + sum(methods.values()) + metrics * len(methods)
    parts = "; ".join(f"{get_method(key).name} {passes:g} + {metrics}" for key, passes in methods.items())
    total = per_image * images
    seconds = total * pass_seconds
    shared = f"; {processes} processes: about {duration(seconds / processes)} each" if processes > 1 else ""
    return [
        f"Expected cost in classifier passes per image (map + metrics): prediction 1; {parts}. "
        f"In all {per_image:,.0f} per image, {total:,.0f} for the {images} images.",
        f"At {pass_seconds * 1000:.1f} ms per image and pass (one timed batch on {device}): "
        f"about {duration(seconds)}{shared}.",
    ]


class FirstImagesEstimate:
    """A progress callback that, once ``after`` images are done, says how long the rest will take.

    Args:
        total: the images this process evaluates.
        report: called once with the estimate's line.
        after: images to time first (at least one batch is always timed).
    """

    def __init__(self, total: int, report: Callable[[str], None], after: int = 1) -> None:
        self.total, self.report, self.after = total, report, after
        self.done = 0
        self.started = time.perf_counter()

    def __call__(self, images: int) -> None:
        """Count ``images`` more done; report once the first ``after`` are."""
        before, self.done = self.done, self.done + images
        if before < self.after <= self.done:
            elapsed = time.perf_counter() - self.started
            left = elapsed / self.done * (self.total - self.done)
            self.report(
                f"The first {self.done} images took {duration(elapsed)}: about {duration(left)} more "
                f"for the other {self.total - self.done} of this process."
            )


def csv_text(rows: list[dict[str, float | str]]) -> str:
    """The rows as CSV, one column per figure (union over rows, in first-seen order)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()})
    return buffer.getvalue()


def _percents(percents: Sequence[int]) -> str:
    return "/".join(str(percent) for percent in percents) + "%"


def markdown_columns(ad_ic_percents: Sequence[int]) -> list[tuple[str, str, int]]:
    """The table's columns, (CSV column, header, decimals): time, AD/IC per percentage, the rest."""
    ad_ic_columns = [
        column
        for percent in ad_ic_percents
        for column in ((f"ad_{percent}", f"AD {percent}% ↓", 2), (f"ic_{percent}", f"IC {percent}% ↑", 2))
    ]
    return [FIRST_MARKDOWN_COLUMN, *ad_ic_columns, *MARKDOWN_COLUMNS]


def markdown_text(
    rows: list[dict[str, float | str]], description: list[str], ad_ic_percents: Sequence[int] = PAPER_AD_IC_PERCENTS
) -> str:
    """A Markdown section: the setup as a list, then a table of the main figures (only columns present)."""
    columns = [column for column in markdown_columns(ad_ic_percents) if any(column[0] in row for row in rows)]
    lines = ["## Evaluation", "", *[f"- {line}" for line in description], ""]
    lines.append("| Method | " + " | ".join(header for _, header, _ in columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for row in rows:
        cells = [f"{row[key]:.{decimals}f}" if key in row else "" for key, _, decimals in columns]
        lines.append(f"| {get_method(str(row['method'])).name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def protocol_line(differences: Sequence[str]) -> str:
    """The report's line on the protocol: the P-TAME paper's, or the paper's except ``differences``."""
    paper = (
        f"ImageNet val's {PAPER_SUBSET} subset of 2000 images, AD/IC at {_percents(PAPER_AD_IC_PERCENTS)}, "
        f"ROAD MoRF/LeRF at {_percents(PAPER_ROAD_PERCENTS)} with {PAPER_ROAD_IMPUTATION} inpainting, "
        f"RISE with {PAPER_RISE_MASKS} masks"
    )
    if not differences:
        return f"Protocol: the P-TAME paper's ({paper})."
    return f"Protocol: the P-TAME paper's ({paper}) except: " + "; ".join(differences) + "."


def setup_description(
    settings: EvaluationSettings, accuracy: float | None, with_masks: bool, data_differences: Sequence[str] = ()
) -> list[str]:
    """Lines that say how the figures of a table were measured (only for what was computed), the
    protocol first: ``data_differences`` says where the images differ from the paper's test subset."""
    lines = [
        protocol_line([*data_differences, *settings.differences_from_the_paper()]),
        "Every map explains the classifier's prediction"
        + (f" (top-1 accuracy {accuracy:.1f}%)." if accuracy is not None else "."),
        "s / image: mean time to compute one map, without the forward pass that finds the prediction.",
        "Blank maps: share of the maps that are constant (no pixel ranked above another: no positive evidence at "
        "the CAM's layer, zero gradients or a saturated classifier); their metrics are those of a map without "
        "information, and another target layer may give one (a manifest entry's target_layer).",
    ]
    if "ad_ic" in settings.metrics:
        lines.append(
            f"AD / IC: the top {_percents(settings.ad_ic_percents)} of the map kept with its soft values; in percent."
        )
    if "road" in settings.metrics:
        removed = ", ".join(f"{percent}%" for percent in settings.road_percents)
        lines.append(
            f"ROAD: area under the accuracy curve at {removed} of the pixels removed ({settings.road_imputation} "
            "imputation), end points (0%, 1) and (100%, 0)."
        )
    if "deletion_insertion" in settings.metrics:
        lines.append(
            f"Deletion / insertion: areas under the class-probability curves ({settings.deletion_steps} steps; "
            "deleted pixels black, inserted onto the blurred image)."
        )
    if "pointing" in settings.metrics and with_masks:
        lines.append(
            "Pointing game: maximum of the map on the object, in percent; with ±15/224: within 15 pixels of it "
            "at 224x224 (Zhang et al.'s tolerance, scaled to the image size); energy-based pointing game "
            "(Energy PG): share of the map's mass on the object."
        )
    if "rise" in settings.methods:
        lines.append(f"RISE: {settings.rise_masks} masks, 7x7 grid, p = 0.5.")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m train evaluate``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="key of a manifest entry (see --manifest)")
    source.add_argument("--checkpoint", type=Path, help="folder with classifier/ and explainer/")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="manifest of --model")
    parser.add_argument("--data", choices=("shapes", "folder"), required=True)
    parser.add_argument("--split", choices=tuple(SPLIT_SEEDS), default="test", help="--data shapes: the split")
    parser.add_argument("--images-root", type=Path, help="--data folder: a folder of images (e.g. ImageNet val)")
    parser.add_argument(
        "--subset",
        choices=(*SUBSET_NAMES, "all"),
        default=PAPER_SUBSET,
        help="--data folder: the P-TAME paper's 2000-image test (default) or val subset of ImageNet val, "
        "or every image of any folder",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        help="--data folder with a flat ImageNet val folder: the ILSVRC2012 devkit folder, or a CSV of file -> "
        "WordNet id (e.g. LOC_val_solution.csv); a class-folder layout needs none",
    )
    parser.add_argument(
        "--images", type=int, help="number of images evaluated (default: the whole subset; shapes: 500)"
    )
    parser.add_argument("--methods", nargs="+", default=list(method_keys()), choices=method_keys())
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    parser.add_argument(
        "--ad-ic-percents",
        type=int,
        nargs="+",
        default=list(PAPER_AD_IC_PERCENTS),
        help="AD/IC: percentages of the map kept (default: the paper's 100 50 15)",
    )
    parser.add_argument(
        "--road-percents",
        type=int,
        nargs="+",
        default=list(PAPER_ROAD_PERCENTS),
        help="ROAD: percentages of the pixels removed (default: the paper's 10 30 50 70)",
    )
    parser.add_argument(
        "--road-imputation",
        choices=("telea", "linear"),
        default=PAPER_ROAD_IMPUTATION,
        help="ROAD: OpenCV Telea inpainting (default, as the official code) or noisy linear imputation",
    )
    parser.add_argument(
        "--rise-masks",
        type=int,
        default=PAPER_RISE_MASKS,
        help=f"RISE masks per image (default: the paper's {PAPER_RISE_MASKS})",
    )
    parser.add_argument("--deletion-steps", type=int, default=50, help="steps of the deletion/insertion curves")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of RISE's masks and ROAD's noise")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's choice; 1 on a CPU shared with other work)"
    )
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bf16 autocast (the official code's setting; default: float32)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the expected cost and stop")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="writes OUT/evaluation.csv, OUT/evaluation.md and OUT/evaluation-per-image.csv",
    )


def _entry(args: argparse.Namespace) -> ModelEntry:
    if args.checkpoint is not None:
        return ModelEntry.from_folder(args.checkpoint)
    entries = {entry.key: entry for entry in load_manifest(args.manifest)}
    if args.model not in entries:
        raise SystemExit(f"no model {args.model!r} in {args.manifest}; known: {sorted(entries)}")
    return entries[args.model]


def relative_to_cwd(source: str) -> str:
    """A model source with the working directory's absolute path dropped, so that a report written
    inside the repository names its folders as the repository does."""
    return source.replace(f"{Path.cwd()}{os.sep}", "")


SHAPES_IMAGES = 500  # --data shapes: images evaluated by default
PER_IMAGE_NAME = "evaluation-per-image.csv"


def _check_arguments(args: argparse.Namespace) -> None:
    if (args.images is not None and args.images < 1) or args.batch_size < 1 or args.rise_masks < 1:
        raise SystemExit("--images, --batch-size and --rise-masks must be >= 1")
    if args.deletion_steps < 1:
        raise SystemExit("--deletion-steps must be >= 1")
    if not all(0 < percent <= 100 for percent in args.ad_ic_percents):
        raise SystemExit(f"--ad-ic-percents must be in 1..100, got {args.ad_ic_percents}")
    road_percents = args.road_percents
    if not all(0 < percent < 100 for percent in road_percents) or road_percents != sorted(set(road_percents)):
        raise SystemExit(f"--road-percents must increase within 1..99, got {road_percents}")
    if args.data == "folder" and args.images_root is None:
        raise SystemExit("--data folder needs --images-root")
    if args.labels is not None and (args.data != "folder" or args.subset == "all"):
        raise SystemExit("--labels labels a flat ImageNet val folder: it needs --data folder and --subset val or test")
    if args.threads is not None and args.threads < 1:
        raise SystemExit("--threads must be >= 1")


@dataclass(frozen=True)
class Images:
    """What an evaluation runs on: its images' names, how to batch any of them, and what to say of them.

    ``batches(indices)``: the images at ``indices`` (of ``names``), in batches of the batch size.
    """

    names: list[str]
    batches: Callable[[Sequence[int]], Iterator[tuple]]
    description: str
    differences: list[str]
    with_masks: bool


def chosen_images(args: argparse.Namespace, model: LoadedModel, paths: list[Path] | None) -> Images:
    """The images of ``--data``: the shapes world's split, or ``paths`` (a folder's, the first ``--images``)."""
    size = model.backbone.preprocessing.crop
    if args.data == "shapes":
        count = args.images or SHAPES_IMAGES
        return Images(
            names=[f"{args.split}/{index}" for index in range(count)],
            batches=lambda indices: shapes_batches(args.split, count, size, args.batch_size, indices),
            description=f"shapes world, split {args.split}, first {count} images at {size} px",
            differences=[f"the shapes world's {args.split} split, not ImageNet"],
            with_masks=True,
        )
    assert paths is not None
    chosen = paths[: args.images]
    count = len(chosen)
    subset = "every image" if args.subset == "all" else f"the paper's {args.subset} subset"
    differences = []
    if args.subset != PAPER_SUBSET:
        differences.append(f"{subset} (paper: its {PAPER_SUBSET} subset)")
    elif count < len(paths):
        differences.append(f"the first {count} of the {len(paths)} images")
    cut = "" if count == len(paths) else ", the first ones"
    return Images(
        names=[image_name(path, args.images_root) for path in chosen],
        batches=lambda indices: folder_batches([chosen[index] for index in indices], model, args.batch_size),
        description=f"{count} images of {args.images_root} ({subset}{cut})",
        differences=differences,
        with_masks=False,
    )


def image_name(path: Path, root: Path) -> str:
    """An image's name in the per-image report: its path under ``root`` (else the whole path)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def per_image_csv(tally: Tally, names: Sequence[str]) -> str:
    """Every figure of every image and method as CSV: image, method, then one column per figure
    (9 significant digits: a float32 value exactly). ``names``: the evaluated images, by index."""
    indices = tally.indices.tolist() if tally.indices is not None else list(range(len(names)))
    columns = list(dict.fromkeys(name for totals in tally.totals.values() for name in totals.values))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "method", *columns])
    for method, totals in tally.totals.items():
        values = totals.per_image()
        for position, index in enumerate(indices):
            cells = [f"{values[column][position].item():.9g}" if column in values else "" for column in columns]
            writer.writerow([names[index], method, *cells])
    return buffer.getvalue()


def print_cost(
    model: LoadedModel,
    settings: EvaluationSettings,
    images: Images,
    args: argparse.Namespace,
    processes: Processes,
) -> None:
    """Print the evaluation's expected cost (``cost_lines``) to stderr, from one timed batch."""
    size = model.backbone.preprocessing.crop
    pixels = torch.rand(min(args.batch_size, len(images.names)), 3, size, size, device=processes.device)
    channels = cam_channels(model, pixels[:1])
    pass_seconds = seconds_per_pass(model, pixels, processes.device, args.amp)
    lines = cost_lines(settings, channels, len(images.names), processes.world_size, pass_seconds, args.device)
    print("\n".join(lines), file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> None:
    """Evaluate, print the table, write OUT/evaluation.csv, OUT/evaluation.md and
    OUT/evaluation-per-image.csv. Under torchrun each process evaluates its share of the batches
    and rank 0 gathers the per-image values and writes the one report."""
    _check_arguments(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    processes = start_processes(args.device)
    try:
        evaluate_on(args, processes)
    finally:
        stop_processes()


def evaluate_on(args: argparse.Namespace, processes: Processes) -> None:
    """``run`` in one process of ``processes``: its share of the batches; rank 0 also writes the report."""
    entry = _entry(args)
    settings = EvaluationSettings(
        methods=tuple(dict.fromkeys(args.methods)),
        metrics=tuple(dict.fromkeys(args.metrics)),
        ad_ic_percents=tuple(dict.fromkeys(args.ad_ic_percents)),
        road_percents=tuple(args.road_percents),
        road_imputation=args.road_imputation,
        rise_masks=args.rise_masks,
        deletion_steps=args.deletion_steps,
        seed=args.seed,
    )
    paths = None
    if args.data == "folder":
        try:
            if args.subset == "all":
                paths = image_files(args.images_root)
            else:
                paths = paper_subset(args.images_root, args.subset, args.labels)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(str(error)) from error
    model = load_model(entry, str(processes.device))
    if not model.has_explainer and any(get_method(method).uses_explainer for method in settings.methods):
        raise SystemExit(f"cannot evaluate P-TAME: {model.explainer_problem} (leave it out with --methods)")
    images = chosen_images(args, model, paths)
    shares = batches_of_rank(len(images.names), args.batch_size, processes.rank, processes.world_size)
    mine = [index for batch in shares for index in batch]
    if processes.is_main:
        print_cost(model, settings, images, args, processes)
    if args.dry_run:
        return
    with tqdm(total=len(mine), desc="evaluate", unit="image", disable=not processes.is_main) as bar:
        estimate = FirstImagesEstimate(len(mine), lambda line: bar.write(line, file=sys.stderr))

        def progress(done: int) -> None:
            bar.update(done)
            if processes.is_main:
                estimate(done)

        tally = evaluate_tally(model, images.batches(mine), settings, processes.device, progress, amp=args.amp)
    tally.indices = torch.tensor(mine, dtype=torch.int64)
    parts = gather_to_main(tally, processes)
    if parts is not None:
        write_report(args, entry, model, images, settings, merge_tallies(parts), processes.world_size)


def write_report(
    args: argparse.Namespace,
    entry: ModelEntry,
    model: LoadedModel,
    images: Images,
    settings: EvaluationSettings,
    tally: Tally,
    processes: int,
) -> None:
    """Write OUT/evaluation.csv, OUT/evaluation.md and OUT/evaluation-per-image.csv of all the images'
    tally, and print the table and where it went."""
    rows = tally.rows()
    description = setup_description(settings, tally.accuracy(), images.with_masks, images.differences)
    classifier = relative_to_cwd(entry.classifier)
    explainer = relative_to_cwd(entry.explainer) if model.has_explainer else "none"
    where = f"device {args.device}" + (f", {processes} processes" if processes > 1 else "")
    where += ", bf16 autocast" if args.amp else ""
    description.insert(0, f"Classifier `{classifier}`, explainer `{explainer}`; {images.description}; {where}.")
    markdown = markdown_text(rows, description, settings.ad_ic_percents)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "evaluation.csv", csv_text(rows))
    atomic_write_text(args.out / "evaluation.md", markdown)
    atomic_write_text(args.out / PER_IMAGE_NAME, per_image_csv(tally, images.names))
    print(markdown)
    print(f"wrote {args.out / 'evaluation.csv'}, {args.out / 'evaluation.md'} and {args.out / PER_IMAGE_NAME}")
