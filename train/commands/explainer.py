"""Train a P-TAME explainer for any classifier on a folder of its images (labels are never read).

    python -m train explainer --classifier local-dir:my/classifier --data my/images --out runs/mine
    python -m train explainer --classifier my_models:build --auxiliary local-dir:my/features --data DIR --out DIR

--classifier: a timm name, "hf-hub:ORG/NAME", "local-dir:PATH" (a timm folder: config.json +
model.safetensors) or "MODULE:FUNCTION", a function of your own (importable from the working
directory) returning a ptame.Backbone or (model, ptame.Preprocessing); vgg16, resnet50 and
vit_b_16 are the paper's, trained with the paper's recipes. --auxiliary: the frozen feature
network, a timm name (default resnet18.tv_in1k, the paper's), "hf-hub:ORG/NAME" or
"local-dir:PATH"; offline it must be in the local Hugging Face cache or a local folder.
--data: images at any depth (DIR/train when it exists); labels are never used.

Every other classifier gets ptame's default recipe (train/recipes.py DEFAULT_RECIPE, the same as
``train_explainer`` without settings): the fuser starts at zero, OneCycle with max_lr 1e-3,
weight decay 1e-4, loss ce 1, area 2, smooth 0.01, batch 32, one pass over the images and at
least 800 steps, at the classifier's own input size. Every recipe value can be overridden.

Training counts the targets it trains on (the classifier's predictions on each augmented batch,
checkpointed with the run): the explainer records how many training images trained each class's
row (config.json's trained_images), and a class it never trained on gets the class-agnostic map,
which the app and ``ptame explain`` name as such (``ptame.class_coverage``).

A held-out share of the images (--held-out, default 10% up to 500) is not trained on: at the end
P-TAME is measured against Grad-CAM on it (AD/IC at 100/50/15%, deletion/insertion), and the
verdict table is printed and written to OUT/verdict.md and the explainer's model card.

Writes to --out: checkpoint.safetensors (every --checkpoint-every steps and at the end;
--resume continues from it, with the same result as an uninterrupted run), log.jsonl (one
record per --log-every steps), and, when the run is complete, explainer/ (PTAME.from_pretrained
loads it; README.md is its model card), verdict.md and verdict.csv, run.json (the full
configuration) and manifest.toml (for python app.py --manifest and python -m train evaluate). A
"local-dir:" classifier or auxiliary network is copied into OUT/classifier and OUT/auxiliary, so
OUT is self-contained: ``python app.py --model-dir OUT`` opens it. Under torchrun the batch is
the global batch, split evenly across the processes; only rank 0 writes.
"""

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import timm
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ptame.class_coverage import record_trained_images
from ptame.errors import CheckpointError
from ptame.explainer import LOCAL_DIR_PREFIX, PTAME
from ptame.loading.backbones import Backbone, create_backbone
from ptame.loading.files import atomic_write_text, replace_folder
from ptame.training import TrainSettings, make_optimizer, make_scheduler, train_explainer, unwrap
from train.cards import model_card
from train.checkpointing import load_checkpoint, read_checkpoint_info, save_checkpoint
from train.data import TrainImages, TrainingOrder, TrainTransform, image_files
from train.distributed import Processes, start_processes, stop_processes
from train.recipes import LOSS_FLAGS, RECIPE_FLAGS, Recipe, recipe_for
from train.runs import (
    BACKBONE_DISPLAY_NAMES,
    CHECKPOINT_NAME,
    EXPLAINER_FOLDER,
    LOG_NAME,
    MANIFEST_NAME,
    RUN_NAME,
    manifest_entry,
)
from train.shards import (
    DEFAULT_SHUFFLE_WINDOW,
    ShardBatches,
    ShardPlan,
    Shards,
    extract_images,
    held_out_numbers,
    is_shard_spec,
    read_shards,
)
from train.verdict import measure_verdict, what_to_try, write_verdict

MAX_HELD_OUT = 500  # default held-out images: 10% of the folder, at most this many
CLASSIFIER_FOLDER = "classifier"  # a local classifier's copy in the run folder
AUXILIARY_FOLDER = "auxiliary"  # a local auxiliary network's copy in the run folder


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser, classifier_flag: str = "--classifier") -> None:
    """The command's options (``python -m train imagenet`` names the classifier ``--backbone``)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        classifier_flag,
        dest="classifier",
        required=True,
        help="timm name, hf-hub:ORG/NAME, local-dir:PATH or MODULE:FUNCTION (vgg16, resnet50, vit_b_16: the paper's)",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="image folder (DIR/train is used if it exists), or webdataset shards: DIR/train-{0000..0127}.tar, "
        "https:// or hf:// URLs, or a shard index .json (train/shards.py)",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder, e.g. runs/mine")
    parser.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="load the classifier's and auxiliary network's weights (--no-pretrained: random, for tests)",
    )
    recipe = parser.add_argument_group("recipe (defaults: the classifier's recipe in train/recipes.py)")
    recipe.add_argument("--lr", type=float, help="OneCycle max_lr")
    recipe.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    for name in LOSS_FLAGS:
        recipe.add_argument(f"--{name.replace('_', '-')}", type=float, help=f"loss {name}")
    recipe.add_argument(
        "--zero-fuser-start", action=argparse.BooleanOptionalAction, help="start the fuser at zero (every map 0.5)"
    )
    recipe.add_argument("--batch-size", type=positive_int, help="global batch size")
    recipe.add_argument("--epochs", type=positive_int, help="passes over the data")
    recipe.add_argument("--min-steps", type=non_negative_int, help="at least this many steps")
    recipe.add_argument("--resize", type=positive_int, help="train transform: shorter side resized to this")
    recipe.add_argument("--crop", type=positive_int, help="train transform: random square crop of this side")
    recipe.add_argument("--seed", type=int, help="data order, augmentation, held-out images, head initialisation")
    recipe.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bf16 autocast on CUDA")
    recipe.add_argument("--auxiliary", help="auxiliary network: timm name, hf-hub:ORG/NAME or local-dir:PATH")
    recipe.add_argument("--feature-levels", type=int, nargs="+", help="auxiliary feature levels (timm out_indices)")
    recipe.add_argument(
        "--auxiliary-size",
        type=positive_int,
        help="the shorter side the auxiliary network sees, the images resized to it (default: the classifier's "
        "input; 2x a small input gives an ImageNet network finer features, at ~4x its cost)",
    )
    run_group = parser.add_argument_group("run")
    run_group.add_argument(
        "--target-layer",
        help="the classifier's layer for Grad-CAM in the verdict, a dotted module path (default: its family's, "
        "else a probe's); recorded in the run's manifest entry",
    )
    run_group.add_argument(
        "--image-size",
        type=positive_int,
        help="the classifier's input side for training and the verdict (default: its own preprocessing's)",
    )
    run_group.add_argument(
        "--steps", type=positive_int, help="total optimiser steps (default: the recipe's, for the data size)"
    )
    run_group.add_argument(
        "--stop-after", type=positive_int, help="stop after this step, checkpointed, to --resume later"
    )
    run_group.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    run_group.add_argument("--checkpoint-every", type=positive_int, default=1000, help="steps between checkpoints")
    run_group.add_argument("--log-every", type=positive_int, default=10, help="steps between log records")
    run_group.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes")
    run_group.add_argument(
        "--shuffle-window",
        type=positive_int,
        default=DEFAULT_SHUFFLE_WINDOW,
        help="shards: images each reader shuffles together (held encoded in memory)",
    )
    run_group.add_argument("--device", help="cuda or cpu (default: cuda if available); torchrun: cuda:LOCAL_RANK")
    run_group.add_argument(
        "--threads",
        type=positive_int,
        help="torch CPU threads per process (default: torch's choice, every core; python -m train sets "
        "OMP_WAIT_POLICY=PASSIVE unless it is set, so that threads waiting for a busy core do not spin)",
    )
    run_group.add_argument("--compile", action="store_true", help="torch.compile the classifier and auxiliary net")
    run_group.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=True, help="channels-last memory layout"
    )
    run_group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    run_group.add_argument(
        "--held-out",
        type=non_negative_int,
        help=f"images kept out of training for the verdict (default: 10%%, at most {MAX_HELD_OUT}; 0: no verdict)",
    )


def resolve_recipe(args: argparse.Namespace, recipe: Recipe) -> Recipe:
    """``recipe`` with the flags given on the command line applied."""
    loss = {name: getattr(args, name) for name in LOSS_FLAGS if getattr(args, name) is not None}
    values = {name: getattr(args, name) for name in RECIPE_FLAGS if getattr(args, name) is not None}
    if args.feature_levels is not None:
        values["feature_levels"] = tuple(args.feature_levels)
    return dataclasses.replace(recipe, loss=dataclasses.replace(recipe.loss, **loss), **values)


def timm_weights(model: torch.nn.Module) -> str | None:
    """The timm name of a model's weights ("resnet50.tv_in1k"), or None for a non-timm model."""
    config = getattr(model, "pretrained_cfg", None) or {}
    return f"{config['architecture']}.{config['tag']}" if config.get("architecture") else None


def absolute_source(name: str) -> str:
    """A ``create_backbone`` name with a relative "local-dir:" path made absolute (a manifest
    reads relative paths from its own folder, not from the current one)."""
    if not name.startswith(LOCAL_DIR_PREFIX):
        return name
    return LOCAL_DIR_PREFIX + str(Path(name.removeprefix(LOCAL_DIR_PREFIX)).expanduser().resolve())


def training_folder(data: Path) -> Path:
    """DIR/train when it exists (ImageNet's layout), else DIR."""
    return data / "train" if (data / "train").is_dir() else data


def held_out_count(num_images: int, requested: int | None) -> int:
    """Images kept for the verdict: ``requested``, or 10% of the folder up to ``MAX_HELD_OUT``.

    Raises:
        SystemExit: ``requested`` leaves no image to train on.
    """
    count = min(MAX_HELD_OUT, num_images // 10) if requested is None else requested
    if count >= num_images:
        raise SystemExit(f"--held-out {count} leaves none of the {num_images} images to train on")
    return count


def split_files(files: list[Path], held_out: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): the held-out ones are the first ``held_out`` of a
    permutation seeded by ``seed`` (``train.shards.held_out_numbers``), both lists in the folder's order."""
    kept_out = set(held_out_numbers(len(files), held_out, seed))
    return (
        [path for index, path in enumerate(files) if index not in kept_out],
        [path for index, path in enumerate(files) if index in kept_out],
    )


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """A run's images: a folder's files (``files``, ``held_files``) or webdataset shards (``shards``, ``plan``).

    source: the folder (absolute) or the shard spec. num_images: training images. held_out: images
    kept for the verdict (``held`` their numbers). epoch_images: images trained on per epoch.
    description: what a resumed run must share (the shards' readers). remark: for the start message.
    """

    source: str
    num_images: int
    held_out: int
    epoch_images: int
    held: list[int]
    files: list[Path] = dataclasses.field(default_factory=list)
    held_files: list[Path] = dataclasses.field(default_factory=list)
    shards: Shards | None = None
    plan: ShardPlan | None = None
    description: dict[str, object] = dataclasses.field(default_factory=dict)
    remark: str = ""

    def loader(
        self, transform: TrainTransform, recipe: Recipe, processes: Processes, start: int, stop: int, workers: int
    ) -> DataLoader:
        """This process's batches of steps ``start`` to ``stop`` (``workers`` loading processes)."""
        common = {"num_workers": workers, "pin_memory": processes.device.type == "cuda"}
        common["prefetch_factor"] = 4 if workers > 0 else None
        if self.plan is not None:
            batches = ShardBatches(self.plan, transform, recipe.seed, processes.rank, start, stop)
            return DataLoader(batches, batch_size=None, **common)
        order = TrainingOrder(
            len(self.files),
            recipe.batch_size,
            stop,
            recipe.seed,
            rank=processes.rank,
            world_size=processes.world_size,
            start_step=start,
        )
        images = TrainImages(self.files, transform)
        return DataLoader(images, batch_size=order.local_batch_size, sampler=order, **common)

    @contextlib.contextmanager
    def verdict_files(self) -> Iterator[list[Path]]:
        """The held-out images as files: a folder's own, or the shards' written to a temporary folder."""
        if self.shards is None:
            yield self.held_files
            return
        with tempfile.TemporaryDirectory(prefix="ptame-held-out-") as folder:
            yield extract_images(self.shards, self.held, Path(folder))


def folder_data(args: argparse.Namespace, recipe: Recipe) -> TrainingData:
    """The images of a folder (DIR/train when it exists): every file, the held-out ones aside."""
    folder = training_folder(Path(args.data))
    all_files = image_files(folder)
    held_out = held_out_count(len(all_files), args.held_out)
    files, held_files = split_files(all_files, held_out, recipe.seed)
    held = held_out_numbers(len(all_files), held_out, recipe.seed)
    source = str(folder.resolve())
    return TrainingData(source, len(files), held_out, len(files), held, files=files, held_files=held_files)


def shard_data(args: argparse.Namespace, recipe: Recipe, processes: Processes) -> TrainingData:
    """The images of webdataset shards, streamed by this layout of processes and workers (train/shards.py)."""
    shards = read_shards(args.data)
    held_out = held_out_count(shards.total, args.held_out)
    held = held_out_numbers(shards.total, held_out, recipe.seed)
    if recipe.batch_size % processes.world_size != 0:
        split = f"{processes.world_size} processes"
        raise ValueError(f"the global batch {recipe.batch_size} does not split evenly across {split}")
    readers = max(args.workers, 1)
    local_batch = recipe.batch_size // processes.world_size
    plan = ShardPlan(shards, held, local_batch, processes.world_size, readers, args.shuffle_window)
    left_out = plan.images_left_out()
    return TrainingData(
        source=args.data,
        num_images=plan.training_images,
        held_out=held_out,
        epoch_images=plan.steps_per_epoch * recipe.batch_size,
        held=held,
        shards=shards,
        plan=plan,
        description={
            "shards": {"count": len(shards.urls), "readers": processes.world_size * readers, "window": plan.window}
        },
        remark=f"; {len(shards.urls)} shards, {left_out} images left out of each epoch" if left_out else "",
    )


def check_resumable(saved: dict[str, object], current: dict[str, object], path: Path) -> None:
    """Refuse to resume a checkpoint of a different run (anything but the data folder's path)."""
    differing = sorted(
        key for key in saved.keys() | current.keys() if key != "data" and saved.get(key) != current.get(key)
    )
    if differing:
        details = "; ".join(f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}" for key in differing)
        raise CheckpointError(f"{path} belongs to a different run ({details})")


def truncate_log(path: Path, last_step: int) -> None:
    """Drop log records after ``last_step`` (written after the checkpoint a run resumes from)."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
        atomic_write_text(path, "".join(line + "\n" for line in lines))


def save_explainer(explainer: PTAME, folder: Path) -> None:
    """``explainer.save_pretrained(folder)`` into a temporary sibling folder, then swapped in
    (``ptame.loading.files.replace_folder``): ``folder`` is never half-written."""
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    explainer.save_pretrained(staging)
    replace_folder(staging, folder)


def copy_local_folder(spec: str, out: Path, name: str) -> None:
    """Copy a "local-dir:PATH" model folder to ``out/name`` (atomically; kept if it is there);
    any other spec is left alone.

    Raises:
        FileNotFoundError: PATH is not a folder.
    """
    if not spec.startswith(LOCAL_DIR_PREFIX):
        return
    source = Path(spec.removeprefix(LOCAL_DIR_PREFIX)).expanduser()
    if not source.is_dir():
        raise FileNotFoundError(f"{spec}: {source} is not a folder")
    target = out / name
    if not target.is_dir():
        staging = out / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        replace_folder(staging, target)


def with_image_size(backbone: Backbone, side: int | None) -> Backbone:
    """The classifier with its preprocessing's crop set to ``side`` (the resize scaled alike)."""
    if side is not None:
        preprocessing = backbone.preprocessing
        resize = round(side * preprocessing.resize / preprocessing.crop)
        backbone.preprocessing = dataclasses.replace(preprocessing, resize=resize, crop=side)
    return backbone


def run(args: argparse.Namespace, command: str = "explainer", paper_schedule: bool = False) -> None:
    """Train, checkpoint, write the explainer and its verdict (see the module docstring).

    Args:
        args: the parsed options.
        command: the command's name, for messages and the reproducing command line.
        paper_schedule: a classifier the paper did not train gets ``PAPER_SCHEDULE`` (train
            imagenet) instead of ``DEFAULT_RECIPE``.
    """
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    processes = start_processes(args.device)
    try:
        train(args, processes, command, recipe_for(args.classifier, paper_schedule=paper_schedule))
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"python -m train {command}: {error}") from error
    finally:
        stop_processes()


def train(args: argparse.Namespace, processes: Processes, command: str, default_recipe: Recipe) -> None:
    """The run of one process: set-up, data, models, resume, the training loop, then the finished run."""
    recipe = resolve_recipe(args, default_recipe)
    checkpoint = checked_checkpoint(args)
    data = shard_data(args, recipe, processes) if is_shard_spec(args.data) else folder_data(args, recipe)
    total_steps = args.steps or recipe.total_steps(data.epoch_images)
    backbone, transform, explainer = build_models(args, recipe, processes)
    description = {
        "command": command,
        "classifier": args.classifier,
        "pretrained": args.pretrained,
        "timm_weights": timm_weights(backbone.model),
        "recipe": recipe.as_dict(),
        "transform": dataclasses.asdict(transform),
        "data": data.source,
        "num_images": data.num_images,
        "held_out": data.held_out,
        "total_steps": total_steps,
        **data.description,
    }
    settings = recipe.settings(compile=args.compile, log_every=args.log_every, channels_last=args.channels_last)
    run = resume(args, checkpoint, explainer, settings, description, total_steps)
    loader = data.loader(transform, recipe, processes, run.start_step, run.stop_step, args.workers)
    if processes.is_main:
        truncate_log(args.out / LOG_NAME, run.start_step)
        print(
            f"P-TAME for {args.classifier}: {data.num_images} images from {data.source} ({data.held_out} more held "
            f"out{data.remark}), steps {run.start_step + 1}-{run.stop_step} of {total_steps}, global batch "
            f"{recipe.batch_size} on {processes.world_size} process(es), {processes.device}; the classifier sees "
            f"{backbone.preprocessing.crop} px, the auxiliary network {recipe.auxiliary} "
            f"{recipe.auxiliary_size or backbone.preprocessing.crop} px",
            file=sys.stderr,
        )
    train_loop(args, processes, backbone, explainer, loader, settings, run, description)
    if not processes.is_main:
        return
    if run.stop_step < total_steps:
        print(f"stopped after step {run.stop_step}; continue with --resume", file=sys.stderr)
        return
    record_classes(unwrap(explainer), run.target_counts)
    tries = what_to_try(recipe, total_steps, backbone.preprocessing.crop)
    with data.verdict_files() as verdict_files:
        finish(args, args.out, explainer.cpu(), backbone, verdict_files, description, processes, tries)


def record_classes(explainer: PTAME, target_counts: torch.Tensor) -> None:
    """Record how many training images trained each class's row (the run's target counts) with the
    explainer (``ptame.class_coverage``: its untrained classes get the class-agnostic row)."""
    untrained = record_trained_images(explainer, target_counts.cpu())
    print(
        f"the classifier's predictions trained {explainer.num_classes - untrained} of its {explainer.num_classes} "
        f"classes; the {untrained} others get P-TAME's class-agnostic map, and the app says so",
        file=sys.stderr,
    )


def checked_checkpoint(args: argparse.Namespace) -> Path:
    """The run's checkpoint file; refuses a folder that holds a run unless --resume (whose checkpoint
    must then be readable: a clear error before any model is built)."""
    checkpoint = args.out / CHECKPOINT_NAME
    if not args.resume and checkpoint.exists():
        raise SystemExit(f"{args.out} already holds a run: pass --resume to continue it, or choose another --out")
    if args.resume:
        read_checkpoint_info(checkpoint)
    return checkpoint


def build_models(
    args: argparse.Namespace, recipe: Recipe, processes: Processes
) -> tuple[Backbone, TrainTransform, PTAME]:
    """The classifier, its train transform and a new explainer on ``processes.device`` (seeded by the
    recipe); rank 0 copies local classifier and auxiliary folders into --out first."""
    out: Path = args.out
    torch.manual_seed(recipe.seed)
    backbone = with_image_size(
        create_backbone(args.classifier, pretrained=args.pretrained, target_layer=args.target_layer), args.image_size
    )
    preprocessing = backbone.preprocessing
    transform = TrainTransform(
        resize=recipe.resize or preprocessing.resize,
        crop=recipe.crop or preprocessing.crop,
        interpolation=preprocessing.interpolation,
    )
    if processes.is_main:
        out.mkdir(parents=True, exist_ok=True)
        copy_local_folder(args.classifier, out, CLASSIFIER_FOLDER)
        copy_local_folder(recipe.auxiliary, out, AUXILIARY_FOLDER)
    if processes.world_size > 1:
        dist.barrier()
    local_auxiliary = recipe.auxiliary.startswith(LOCAL_DIR_PREFIX)
    explainer = PTAME(
        num_classes=len(backbone.class_names),
        auxiliary=f"{LOCAL_DIR_PREFIX}../{AUXILIARY_FOLDER}" if local_auxiliary else recipe.auxiliary,
        feature_levels=recipe.feature_levels,
        auxiliary_size=recipe.auxiliary_size,
        pretrained_auxiliary=args.pretrained,
        class_names=backbone.class_names,
        auxiliary_root=out / EXPLAINER_FOLDER,
    ).to(processes.device)
    return backbone, transform, explainer


@dataclasses.dataclass
class Resumed:
    """Where a run starts and stops, with its optimiser and schedule (restored when resuming)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    start_step: int
    stop_step: int
    target_counts: torch.Tensor  # (K,) int64: each class's training targets so far


def resume(
    args: argparse.Namespace,
    checkpoint: Path,
    explainer: PTAME,
    settings: TrainSettings,
    description: dict[str, object],
    total_steps: int,
) -> Resumed:
    """A new optimiser and schedule, restored from ``checkpoint`` with --resume (the run's
    configuration must be the checkpoint's); the run stops after --stop-after or at ``total_steps``."""
    optimizer = make_optimizer(explainer, settings)
    scheduler = make_scheduler(optimizer, settings, total_steps)
    start_step, target_counts = 0, torch.zeros(explainer.num_classes, dtype=torch.int64)
    if args.resume:
        info = load_checkpoint(checkpoint, explainer, optimizer, scheduler)
        check_resumable(info.run, description, checkpoint)
        start_step, target_counts = info.step, info.target_counts
    stop_step = total_steps if args.stop_after is None else min(args.stop_after, total_steps)
    if stop_step < start_step:
        raise SystemExit(f"--stop-after {args.stop_after} is before the checkpoint's step {start_step}")
    return Resumed(optimizer, scheduler, start_step, stop_step, target_counts.to(explainer.head.fuser.weight.device))


def train_loop(
    args: argparse.Namespace,
    processes: Processes,
    backbone: Backbone,
    explainer: PTAME,
    loader: DataLoader,
    settings: TrainSettings,
    run: Resumed,
    description: dict[str, object],
) -> None:
    """Train from ``run.start_step`` to ``run.stop_step`` (across the processes), logging to
    log.jsonl and checkpointing every --checkpoint-every steps and at the end (rank 0)."""
    model: PTAME | DistributedDataParallel = explainer
    if processes.world_size > 1:
        if processes.device.type == "cuda":
            explainer.head = torch.nn.SyncBatchNorm.convert_sync_batchnorm(explainer.head)
        device_ids = [processes.device.index] if processes.device.type == "cuda" else None
        model = DistributedDataParallel(explainer, device_ids=device_ids)
    if processes.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    log_path, started = args.out / LOG_NAME, time.perf_counter()

    def log(step: int, record: dict[str, float]) -> None:
        if processes.is_main:
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({**record, "elapsed_s": round(time.perf_counter() - started, 3)}) + "\n")

    def checkpoint_if_due(step: int) -> None:
        if processes.is_main and (step % args.checkpoint_every == 0 or step == run.stop_step):
            save_checkpoint(
                args.out / CHECKPOINT_NAME,
                explainer,
                run.optimizer,
                run.scheduler,
                step,
                description,
                run.target_counts,
            )

    preprocessing = backbone.preprocessing
    train_explainer(
        backbone.model,
        model,
        loader,
        preprocessing.mean,
        preprocessing.std,
        settings,
        total_steps=run.stop_step,
        device=processes.device,
        progress=args.progress and processes.is_main,
        on_step=log,
        start_step=run.start_step,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        after_step=checkpoint_if_due,
        target_counts=run.target_counts,
    )


def finish(
    args: argparse.Namespace,
    out: Path,
    explainer: PTAME,
    backbone: Backbone,
    verdict_files: list[Path],
    description: dict[str, object],
    processes: Processes,
    tries: list[str],
) -> None:
    """Write the finished run: explainer/, the verdict (with ``tries``, what to change after a
    loss), run.json, manifest.toml and the model card."""
    save_explainer(explainer, out / EXPLAINER_FOLDER)
    verdict = None
    if verdict_files:
        rows = measure_verdict(backbone, explainer, verdict_files, processes.device, progress=args.progress)
        verdict = write_verdict(out, rows, tries)
        print(verdict, file=sys.stderr)
    config = {
        **description,
        "world_size": processes.world_size,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "arguments": vars(args) | {"data": str(args.data), "out": str(args.out)},
    }
    atomic_write_text(out / RUN_NAME, json.dumps(config, indent=2) + "\n")
    card = model_card(config, str((out / EXPLAINER_FOLDER).resolve()), "apache-2.0", verdict)
    atomic_write_text(out / EXPLAINER_FOLDER / "README.md", card)
    self_contained = (out / CLASSIFIER_FOLDER).is_dir()
    entry = manifest_entry(
        key=out.resolve().name,
        display_name=f"{BACKBONE_DISPLAY_NAMES.get(args.classifier, args.classifier)} ({out})",
        classifier=f"{LOCAL_DIR_PREFIX}{CLASSIFIER_FOLDER}" if self_contained else absolute_source(args.classifier),
        explainer=EXPLAINER_FOLDER,
        target_layer=args.target_layer,
    )
    atomic_write_text(out / MANIFEST_NAME, f"# This run's explainer, for python app.py --manifest.\n{entry}\n")
    print(f"explainer written to {out / EXPLAINER_FOLDER}", file=sys.stderr)
    if self_contained:
        print(f"open it in the app: python app.py --model-dir {out}", file=sys.stderr)
    else:
        print(f"open it in the app: python app.py --manifest {out / MANIFEST_NAME}", file=sys.stderr)
