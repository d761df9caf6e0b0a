"""Evaluate P-TAME and the baselines: every method x every metric on a dataset, as CSV and Markdown.

    python -m train evaluate --checkpoint checkpoints/shapes --data shapes --images 500 --out checkpoints/shapes
    python -m train evaluate --model resnet50 --data folder --images-root IMAGENET/val --out DIR
    torchrun --nproc-per-node 8 -m train evaluate --model resnet50 --device cuda ... --out DIR

The classifier and its P-TAME explainer come from a manifest entry (``--model KEY``) or a folder with
classifier/ and explainer/ (``--checkpoint``). Images: a generated world's split (``--data shapes``,
``textures``, any world of ``ptame.datasets.WORLDS``; with ground-truth masks, so the pointing games
are scored too) or a folder of images: ImageNet val, of which ``--subset test`` (the default) and
``val`` are the P-TAME paper's fixed 2000-image subsets (train/imagenet_val.py; a flat val folder
needs ``--labels``), ``all`` every image of any folder.

The defaults are the paper's protocol: every map explains the classifier's own prediction; AD/IC
at 100/50/15%; ROAD MoRF/LeRF at 10/30/50/70% with OpenCV Telea inpainting; each method's declared
evaluation options at the paper's values (RISE: 8000 masks). Every choice has a flag, and the
report's first lines say which protocol and settings made it.
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
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ptame.datasets import WORLDS, get_world
from ptame.datasets.world import SPLIT_SEEDS
from ptame.loading.files import atomic_write_text
from ptame.methods import METHODS, EvaluationOption, Method, get_method, method_keys
from ptame.serving.loader import LoadedModel, load_model
from ptame.serving.manifest import DEFAULT_MANIFEST, ModelEntry, load_manifest
from train.data import image_files
from train.distributed import Processes, batches_of_rank, gather_to_main, start_processes, stop_processes
from train.evaluation import (
    METRICS,
    PAPER_AD_IC_PERCENTS,
    PAPER_ROAD_IMPUTATION,
    PAPER_ROAD_PERCENTS,
    PAPER_SUBSET,
    EvaluationSettings,
    Tally,
    evaluate_tally,
    folder_batches,
    merge_tallies,
    world_object_batches,
)
from train.evaluation_report import (
    FirstImagesEstimate,
    cam_channels,
    cost_lines,
    csv_text,
    image_name,
    markdown_text,
    per_image_csv,
    relative_to_cwd,
    seconds_per_pass,
    setup_description,
)
from train.imagenet_val import SUBSET_NAMES, paper_subset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m train evaluate``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="key of a manifest entry (see --manifest)")
    source.add_argument("--checkpoint", type=Path, help="folder with classifier/ and explainer/")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="manifest of --model")
    parser.add_argument(
        "--data", choices=(*WORLDS, "folder"), required=True, help="a generated world's images, or a folder"
    )
    parser.add_argument("--split", choices=tuple(SPLIT_SEEDS), default="test", help="--data WORLD: the split")
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
        "--images", type=int, help="number of images evaluated (default: the whole subset; a world: 500)"
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
    for method, option in declared_options():
        parser.add_argument(
            option.flag,
            type=int,
            default=option.paper,
            help=f"{method.name} {option.unit} per image (default: the paper's {option.paper})",
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


WORLD_IMAGES = 500  # --data WORLD: images evaluated by default
PER_IMAGE_NAME = "evaluation-per-image.csv"


def declared_options() -> list[tuple[Method, EvaluationOption]]:
    """Every registered method's evaluation options (RISE's masks), each with its method."""
    return [(method, option) for method in METHODS.values() for option in method.evaluation_options]


def _option_dest(option: EvaluationOption) -> str:
    return option.flag.lstrip("-").replace("-", "_")


def _check_arguments(args: argparse.Namespace) -> None:
    options = [option for _, option in declared_options()]
    if (
        (args.images is not None and args.images < 1)
        or args.batch_size < 1
        or any(getattr(args, _option_dest(option)) < 1 for option in options)
    ):
        flags = ["--images", "--batch-size", *(option.flag for option in options)]
        raise SystemExit(f"{', '.join(flags[:-1])} and {flags[-1]} must be >= 1")
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
    several_objects: bool = False


def chosen_images(args: argparse.Namespace, model: LoadedModel, paths: list[Path] | None) -> Images:
    """The images of ``--data``: a world's split, or ``paths`` (a folder's, the first ``--images``)."""
    size = model.backbone.preprocessing.crop
    if args.data != "folder":
        world, count = get_world(args.data), args.images or WORLD_IMAGES
        return Images(
            names=[f"{args.split}/{index}" for index in range(count)],
            batches=lambda indices: world_object_batches(world, args.split, count, size, args.batch_size, indices),
            description=f"{world.name} world, split {args.split}, first {count} images at {size} px",
            differences=[f"the {world.name} world's {args.split} split, not ImageNet"],
            with_masks=True,
            several_objects=world.max_objects > 1,
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
        batches=lambda indices: folder_batches([chosen[index] for index in indices], model.backbone, args.batch_size),
        description=f"{count} images of {args.images_root} ({subset}{cut})",
        differences=differences,
        with_masks=False,
    )


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
    channels = cam_channels(model.backbone, pixels[:1])
    pass_seconds = seconds_per_pass(model.backbone, pixels, processes.device, args.amp)
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
        method_options={
            method.key: {option.keyword: getattr(args, _option_dest(option))} for method, option in declared_options()
        },
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
    needs_explainer = [get_method(key).name for key in settings.methods if get_method(key).uses_explainer]
    if not model.has_explainer and needs_explainer:
        problem = model.explainer_problem
        raise SystemExit(f"cannot evaluate {needs_explainer[0]}: {problem} (leave it out with --methods)")
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

        explainer = model.explainer if model.has_explainer else None
        tally = evaluate_tally(
            model.backbone, explainer, images.batches(mine), settings, processes.device, progress, amp=args.amp
        )
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
    description = setup_description(
        settings, tally.accuracy(), images.with_masks, images.differences, images.several_objects
    )
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
