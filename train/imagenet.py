"""Train a P-TAME explainer on ImageNet (or any image folder) with the paper's recipe.

    python -m train imagenet --backbone resnet50 --data /data/imagenet --out runs/resnet50
    torchrun --nproc-per-node 8 -m train imagenet --backbone vit_b_16 --data DIR --out runs/vit

--backbone: vgg16, resnet50, vit_b_16 (the paper's recipes, train/recipes.py) or any timm name
(the default recipe). --data: images are read from DIR/train when it exists, else from DIR, at
any depth; labels are never used. Every recipe value can be overridden by a flag. Under torchrun
the recipe's batch is the global batch, split evenly across the processes; only rank 0 writes.

Writes to --out: checkpoint.safetensors (every --checkpoint-every steps and at the end;
--resume continues from it, with the same result as an uninterrupted run), log.jsonl (one
record per --log-every steps), and, when the run is complete, explainer/ (PTAME.from_pretrained
loads it), run.json (the full configuration) and manifest.toml (this run as a one-entry
manifest, for python -m train evaluate --model NAME --manifest RUN/manifest.toml).
"""

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import timm
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ptame.backbones import create_backbone
from ptame.errors import CheckpointError
from ptame.explainer import LOCAL_DIR_PREFIX, PTAME
from ptame.files import atomic_write_text, replace_folder
from ptame.training import make_optimizer, make_scheduler, train_explainer
from train.checkpointing import load_checkpoint, read_checkpoint_info, save_checkpoint
from train.data import TrainImages, TrainingOrder, TrainTransform, image_files
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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--backbone", required=True, help="vgg16, resnet50, vit_b_16 or any timm model name")
    parser.add_argument("--data", type=Path, required=True, help="image folder (DIR/train is used if it exists)")
    parser.add_argument("--out", type=Path, required=True, help="run folder, e.g. runs/resnet50")
    parser.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="load the classifier's and auxiliary network's weights (--no-pretrained: random, for tests)",
    )
    recipe = parser.add_argument_group("recipe (defaults: the backbone's recipe in train/recipes.py)")
    recipe.add_argument("--lr", type=float, help="OneCycle max_lr")
    recipe.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    for name in LOSS_FLAGS:
        recipe.add_argument(f"--{name.replace('_', '-')}", type=float, help=f"loss {name}")
    recipe.add_argument("--batch-size", type=positive_int, help="global batch size")
    recipe.add_argument("--epochs", type=positive_int, help="passes over the data")
    recipe.add_argument("--resize", type=positive_int, help="train transform: shorter side resized to this")
    recipe.add_argument("--crop", type=positive_int, help="train transform: random square crop of this side")
    recipe.add_argument("--seed", type=int, help="data order, augmentation and head initialisation")
    recipe.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bf16 autocast on CUDA")
    recipe.add_argument("--auxiliary", help="auxiliary network (timm name)")
    recipe.add_argument("--feature-levels", type=int, nargs="+", help="auxiliary feature levels (timm out_indices)")
    run_group = parser.add_argument_group("run")
    run_group.add_argument(
        "--steps", type=positive_int, help="total optimiser steps (default: epochs x images // batch)"
    )
    run_group.add_argument(
        "--stop-after", type=positive_int, help="stop after this step, checkpointed, to --resume later"
    )
    run_group.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    run_group.add_argument("--checkpoint-every", type=positive_int, default=1000, help="steps between checkpoints")
    run_group.add_argument("--log-every", type=positive_int, default=10, help="steps between log records")
    run_group.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes")
    run_group.add_argument("--device", help="cuda or cpu (default: cuda if available); torchrun: cuda:LOCAL_RANK")
    run_group.add_argument("--compile", action="store_true", help="torch.compile the classifier and auxiliary net")
    run_group.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=True, help="channels-last memory layout"
    )
    run_group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")


def resolve_recipe(args: argparse.Namespace) -> Recipe:
    """The backbone's recipe with the flags given on the command line applied."""
    recipe = recipe_for(args.backbone)
    loss = {name: getattr(args, name) for name in LOSS_FLAGS if getattr(args, name) is not None}
    values = {name: getattr(args, name) for name in RECIPE_FLAGS if getattr(args, name) is not None}
    if args.feature_levels is not None:
        values["feature_levels"] = tuple(args.feature_levels)
    return dataclasses.replace(recipe, loss=dataclasses.replace(recipe.loss, **loss), **values)


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0


def start_processes(device: str | None) -> Processes:
    """Join the torchrun process group if there is one (NCCL on CUDA, Gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    wanted = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world_size == 1:
        return Processes(rank=0, world_size=1, device=wanted)
    if wanted.type == "cuda":
        wanted = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(wanted)
    dist.init_process_group(backend="nccl" if wanted.type == "cuda" else "gloo")
    return Processes(rank=dist.get_rank(), world_size=world_size, device=wanted)


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
    (``ptame.files.replace_folder``): ``folder`` is never half-written."""
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    explainer.save_pretrained(staging)
    replace_folder(staging, folder)


def run(args: argparse.Namespace) -> None:
    """Train, checkpoint, and write the explainer (see the module docstring)."""
    processes = start_processes(args.device)
    try:
        train(args, processes)
    except (CheckpointError, FileNotFoundError) as error:
        raise SystemExit(f"python -m train imagenet: {error}") from error
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train(args: argparse.Namespace, processes: Processes) -> None:
    """The run of one process."""
    recipe = resolve_recipe(args)
    out: Path = args.out
    checkpoint = out / CHECKPOINT_NAME
    if not args.resume and checkpoint.exists():
        raise SystemExit(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if args.resume:
        read_checkpoint_info(checkpoint)  # a clear error before any model is built

    torch.manual_seed(recipe.seed)
    backbone = create_backbone(args.backbone, pretrained=args.pretrained)
    preprocessing = backbone.preprocessing
    transform = TrainTransform(
        resize=recipe.resize or preprocessing.resize,
        crop=recipe.crop or preprocessing.crop,
        interpolation=preprocessing.interpolation,
    )
    explainer = PTAME(
        num_classes=len(backbone.class_names),
        auxiliary=recipe.auxiliary,
        feature_levels=recipe.feature_levels,
        pretrained_auxiliary=args.pretrained,
        class_names=backbone.class_names,
    ).to(processes.device)
    folder = training_folder(args.data)
    files = image_files(folder)
    total_steps = args.steps or recipe.epochs * (len(files) // recipe.batch_size)
    description = {
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "timm_weights": timm_weights(backbone.model),
        "recipe": recipe.as_dict(),
        "transform": dataclasses.asdict(transform),
        "data": str(folder.resolve()),
        "num_images": len(files),
        "total_steps": total_steps,
    }

    settings = recipe.settings(compile=args.compile, log_every=args.log_every, channels_last=args.channels_last)
    optimizer = make_optimizer(explainer, settings)
    scheduler = make_scheduler(optimizer, settings, total_steps)
    start_step = 0
    if args.resume:
        info = load_checkpoint(checkpoint, explainer, optimizer, scheduler)
        check_resumable(info.run, description, checkpoint)
        start_step = info.step
    stop_step = total_steps if args.stop_after is None else min(args.stop_after, total_steps)
    if stop_step < start_step:
        raise SystemExit(f"--stop-after {args.stop_after} is before the checkpoint's step {start_step}")

    model: PTAME | DistributedDataParallel = explainer
    if processes.world_size > 1:
        if processes.device.type == "cuda":
            explainer.head = torch.nn.SyncBatchNorm.convert_sync_batchnorm(explainer.head)
        device_ids = [processes.device.index] if processes.device.type == "cuda" else None
        model = DistributedDataParallel(explainer, device_ids=device_ids)
    order = TrainingOrder(
        len(files),
        recipe.batch_size,
        stop_step,
        recipe.seed,
        rank=processes.rank,
        world_size=processes.world_size,
        start_step=start_step,
    )
    loader = DataLoader(
        TrainImages(files, transform),
        batch_size=order.local_batch_size,
        sampler=order,
        num_workers=args.workers,
        pin_memory=processes.device.type == "cuda",
        prefetch_factor=4 if args.workers > 0 else None,
    )
    if processes.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    log_path = out / LOG_NAME
    started = time.perf_counter()
    if processes.is_main:
        out.mkdir(parents=True, exist_ok=True)
        truncate_log(log_path, start_step)
        print(
            f"P-TAME for {args.backbone}: {len(files)} images from {folder}, steps {start_step + 1}-{stop_step} "
            f"of {total_steps}, global batch {recipe.batch_size} on {processes.world_size} process(es), "
            f"{processes.device}",
            file=sys.stderr,
        )

    def log(step: int, record: dict[str, float]) -> None:
        if processes.is_main:
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({**record, "elapsed_s": round(time.perf_counter() - started, 3)}) + "\n")

    def checkpoint_if_due(step: int) -> None:
        if processes.is_main and (step % args.checkpoint_every == 0 or step == stop_step):
            save_checkpoint(checkpoint, explainer, optimizer, scheduler, step, description)

    train_explainer(
        backbone.model,
        model,
        loader,
        preprocessing.mean,
        preprocessing.std,
        settings,
        total_steps=stop_step,
        device=processes.device,
        progress=args.progress and processes.is_main,
        on_step=log,
        start_step=start_step,
        optimizer=optimizer,
        scheduler=scheduler,
        after_step=checkpoint_if_due,
    )
    if processes.is_main and stop_step == total_steps:
        save_explainer(explainer.cpu(), out / EXPLAINER_FOLDER)
        config = {
            **description,
            "world_size": processes.world_size,
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "timm": timm.__version__},
            "arguments": vars(args) | {"data": str(args.data), "out": str(args.out)},
        }
        atomic_write_text(out / RUN_NAME, json.dumps(config, indent=2) + "\n")
        entry = manifest_entry(
            key=out.resolve().name,
            display_name=f"{BACKBONE_DISPLAY_NAMES.get(args.backbone, args.backbone)} ({out})",
            classifier=absolute_source(args.backbone),
            explainer=EXPLAINER_FOLDER,
        )
        atomic_write_text(out / MANIFEST_NAME, f"# This run's explainer, for python -m train evaluate.\n{entry}\n")
        print(f"explainer written to {out / EXPLAINER_FOLDER}", file=sys.stderr)
    elif processes.is_main:
        print(f"stopped after step {stop_step}; continue with --resume", file=sys.stderr)
