"""What an evaluation says: its expected cost before it starts, and its report (CSV, Markdown, the setup).

``cost_lines`` counts each method's classifier passes per image (its map's, from the method
registry, and its metrics') and times them; ``markdown_text`` and ``setup_description`` write the
table and the lines that say how it was measured, the protocol first (``protocol_line``: the
P-TAME paper's, or what differs from it); ``csv_text`` and ``per_image_csv`` write the figures.
"""

import csv
import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ptame.bench.timing import synchronize
from ptame.loading.backbones import Backbone
from ptame.methods import METHODS, get_method
from ptame.methods.hooks import as_feature_grid, capture_target_layer, single_output
from train.evaluation import (
    PAPER_AD_IC_PERCENTS,
    PAPER_ROAD_IMPUTATION,
    PAPER_ROAD_PERCENTS,
    PAPER_SUBSET,
    EvaluationSettings,
    Tally,
    _percents,
)

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
    ("class_switching", "Class switching ↑", 2),
    ("blank_maps", "Blank maps % ↓", 1),
)


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


def cam_channels(backbone: Backbone, pixels: torch.Tensor) -> int:
    """The channels of the classifier's CAM target layer, from one pass over ``pixels`` (0 if the
    layer's output is not a feature grid: the CAM methods will say why when they run)."""
    with torch.inference_mode(), capture_target_layer(backbone) as outputs:
        backbone.logits(pixels)
    try:
        return int(as_feature_grid(backbone, single_output(outputs, backbone)).shape[1])
    except ValueError:
        return 0


def seconds_per_pass(backbone: Backbone, pixels: torch.Tensor, device: torch.device, amp: bool) -> float:
    """Seconds per image of one forward pass of the classifier, timed on a batch (after a warm-up pass)."""
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)
    with torch.inference_mode(), autocast:
        backbone.logits(pixels)
        synchronize(device)
        start = time.perf_counter()
        backbone.logits(pixels)
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
    declared = [
        f"{method.name} with {option.paper} {option.unit}"
        for method in METHODS.values()
        for option in method.evaluation_options
    ]
    paper = ", ".join(
        [
            f"ImageNet val's {PAPER_SUBSET} subset of 2000 images",
            f"AD/IC at {_percents(PAPER_AD_IC_PERCENTS)}",
            f"ROAD MoRF/LeRF at {_percents(PAPER_ROAD_PERCENTS)} with {PAPER_ROAD_IMPUTATION} inpainting",
            *declared,
        ]
    )
    if not differences:
        return f"Protocol: the P-TAME paper's ({paper})."
    return f"Protocol: the P-TAME paper's ({paper}) except: " + "; ".join(differences) + "."


def setup_description(
    settings: EvaluationSettings,
    accuracy: float | None,
    with_masks: bool,
    data_differences: Sequence[str] = (),
    several_objects: bool = False,
) -> list[str]:
    """Lines that say how the figures of a table were measured (only for what was computed), the
    protocol first: ``data_differences`` says where the images differ from the paper's test subset;
    ``several_objects``: some images hold several objects (class switching was measured)."""
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
    if "switching" in settings.metrics and with_masks and several_objects:
        lines.append(
            "Class switching: on the images of two or more objects of different classes, the share of the objects "
            "whose class's map has its maximum on the object, in percent (one map per object; P-TAME's come from "
            "one pass, the other methods run once per class)."
        )
    for key in settings.methods:
        method = get_method(key)
        if method.evaluation_note:
            lines.append(f"{method.name}: {method.evaluation_note.format(**settings.evaluation_values(key))}")
    return lines


def relative_to_cwd(source: str) -> str:
    """A model source with the working directory's absolute path dropped, so that a report written
    inside the repository names its folders as the repository does."""
    return source.replace(f"{Path.cwd()}{os.sep}", "")


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
