"""Evaluate P-TAME and the baselines: every method x every metric on a dataset, as CSV and Markdown.

    python -m train evaluate --checkpoint checkpoints/shapes --data shapes --images 500 --out checkpoints/shapes
    python -m train evaluate --model resnet50 --data folder --images-root IMAGENET/val --out DIR

The classifier and its P-TAME explainer come from a manifest entry (``--model KEY``) or a folder with
classifier/ and explainer/ (``--checkpoint``). Images: the shapes world's test split (with
ground-truth masks, so the pointing games are scored too) or a folder of images: ImageNet val, of
which ``--subset test`` (the default) and ``val`` are the P-TAME paper's fixed 2000-image subsets
(train/imagenet_val.py; a flat val folder needs ``--labels``), ``all`` every image of any folder.

The defaults are the paper's protocol: every map explains the classifier's own prediction; AD/IC
at 100/50/15%; ROAD MoRF/LeRF at 10/30/50/70% with OpenCV Telea inpainting; RISE with 8000 masks.
Every choice has a flag, and the report's first lines say which protocol and settings made it.
Writes OUT/evaluation.csv (every figure) and OUT/evaluation.md (the table), and prints the table.
"""

import argparse
import csv
import io
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ptame.bench.timing import synchronize
from ptame.datasets.shapes import SPLIT_SEEDS, ShapesDataset
from ptame.files import atomic_write_text
from ptame.methods import get_method, method_keys
from ptame.metrics import ad_ic, deletion_insertion, energy_pointing_game, pointing_game, road, road_auc
from ptame.serving.manifest import DEFAULT_MANIFEST, LoadedModel, ModelEntry, load_manifest, load_model
from train.data import ImageFiles, image_files
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

    def means(self) -> dict[str, float]:
        """Each figure averaged over the images (ROAD: the AUCs of the mean curves)."""
        row = {"images": float(self.images), "seconds_per_image": self.seconds / max(self.images, 1)}
        for name, parts in self.values.items():
            row[name] = torch.cat(parts).mean().item()
        return row


def method_maps(
    method: str, model: LoadedModel, pixels: torch.Tensor, classes: torch.Tensor, settings: EvaluationSettings
) -> torch.Tensor:
    """(B, H, W) maps in [0, 1] of one registered method for a batch."""
    chosen = get_method(method)
    options = dict(settings.options(method))
    if chosen.uses_explainer:
        options["explainer"] = model.explainer
    return chosen(model.backbone, pixels, classes, **options)


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


def evaluate(
    model: LoadedModel,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    settings: EvaluationSettings,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, float | str]], float | None]:
    """Run every method and metric over batches of images.

    Args:
        model: the classifier and its explainer, on ``device``.
        batches: (pixels (B, 3, H, W) in [0, 1], labels (B,) int64 or None, masks (B, H, W) bool or
            None); masks enable the pointing games, labels the classifier's accuracy.
        settings: methods, metrics and their parameters.
        device: where to compute.
        progress: called with the number of images of each finished batch.

    Returns:
        (rows, accuracy): one row per method (figures averaged over the images; AD, IC and the
        pointing game in percent), and the classifier's top-1 accuracy in percent (None without labels).
    """
    unknown = sorted(set(settings.methods) - set(method_keys())) + sorted(set(settings.metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown methods or metrics {unknown}; methods: {method_keys()}, metrics: {METRICS}")
    totals = {method: MethodTotals() for method in settings.methods}
    correct, labelled = 0, 0
    for pixels, labels, masks in batches:
        pixels = pixels.to(device)
        masks = masks.to(device) if masks is not None else None
        with torch.inference_mode():
            classes = model.backbone.logits(pixels).argmax(dim=1)
        if labels is not None:
            correct += int((classes.cpu() == labels).sum())
            labelled += labels.numel()
        for method in settings.methods:
            synchronize(device)
            start = time.perf_counter()
            maps = method_maps(method, model, pixels, classes, settings)
            synchronize(device)
            totals[method].seconds += time.perf_counter() - start
            totals[method].images += pixels.shape[0]
            score_batch(totals[method], model, pixels, maps, classes, masks, settings)
        if progress is not None:
            progress(pixels.shape[0])
    rows = [{"method": method, **totals[method].means()} for method in settings.methods]
    return rows, (100.0 * correct / labelled if labelled else None)


def shapes_batches(
    split: str, count: int, size: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The first ``count`` images of a shapes split, with labels and ground-truth masks."""
    yield from DataLoader(ShapesDataset(split, count, size), batch_size=batch_size)


def folder_batches(paths: Sequence[Path], model: LoadedModel, batch_size: int) -> Iterator[tuple]:
    """Images from files through the classifier's preprocessing; no labels, no masks."""
    for pixels in DataLoader(ImageFiles(paths, model.backbone.preprocessing.transform()), batch_size=batch_size):
        yield pixels, None, None


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
    parser.add_argument("--out", type=Path, required=True, help="writes OUT/evaluation.csv and OUT/evaluation.md")


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


def run(args: argparse.Namespace) -> None:
    """Evaluate, print the table, write OUT/evaluation.csv and OUT/evaluation.md."""
    _check_arguments(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
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
    if args.data == "folder":
        try:
            if args.subset == "all":
                paths = image_files(args.images_root)
            else:
                paths = paper_subset(args.images_root, args.subset, args.labels)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(str(error)) from error
    model = load_model(entry, args.device)
    if not model.has_explainer and any(get_method(method).uses_explainer for method in settings.methods):
        raise SystemExit(f"cannot evaluate P-TAME: {model.explainer_problem} (leave it out with --methods)")
    if args.data == "shapes":
        count = args.images or SHAPES_IMAGES
        batches = shapes_batches(args.split, count, model.backbone.preprocessing.crop, args.batch_size)
        data = f"shapes world, split {args.split}, first {count} images at {model.backbone.preprocessing.crop} px"
        data_differences = [f"the shapes world's {args.split} split, not ImageNet"]
    else:
        chosen = paths[: args.images]
        count = len(chosen)
        batches = folder_batches(chosen, model, args.batch_size)
        subset = "every image" if args.subset == "all" else f"the paper's {args.subset} subset"
        data = f"{count} images of {args.images_root} ({subset}{'' if count == len(paths) else ', the first ones'})"
        data_differences = []
        if args.subset != PAPER_SUBSET:
            data_differences.append(f"{subset} (paper: its {PAPER_SUBSET} subset)")
        elif count < len(paths):
            data_differences.append(f"the first {count} of the {len(paths)} images")
    with tqdm(total=count, desc="evaluate", unit="image") as bar:
        rows, accuracy = evaluate(model, batches, settings, device, progress=bar.update)
    description = setup_description(settings, accuracy, args.data == "shapes", data_differences)
    classifier = relative_to_cwd(entry.classifier)
    explainer = relative_to_cwd(entry.explainer) if model.has_explainer else "none"
    description.insert(0, f"Classifier `{classifier}`, explainer `{explainer}`; {data}; device {device}.")
    markdown = markdown_text(rows, description, settings.ad_ic_percents)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "evaluation.csv", csv_text(rows))
    atomic_write_text(args.out / "evaluation.md", markdown)
    print(markdown)
    print(f"wrote {args.out / 'evaluation.csv'} and {args.out / 'evaluation.md'}")
