"""The files of a training run's folder, the manifest entry that points the app at a run, and
the staging and options shared by the commands that train a synthetic world's networks."""

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from timm.models import save_for_hf
from torch import nn

from ptame.files import replace_folder

CHECKPOINT_NAME = "checkpoint.safetensors"  # head, optimiser, schedule, step, RNG (train/checkpointing.py)
LOG_NAME = "log.jsonl"  # one record per logged interval
RUN_NAME = "run.json"  # the finished run's full configuration
EXPLAINER_FOLDER = "explainer"  # PTAME.save_pretrained of the finished run
MANIFEST_NAME = "manifest.toml"  # a one-entry manifest of the finished run (for python -m train evaluate)
EVALUATION_NAME = "evaluation.md"  # written by python -m train evaluate --out RUN
BACKBONE_DISPLAY_NAMES = {"vgg16": "VGG-16", "resnet50": "ResNet-50", "vit_b_16": "ViT-B/16"}


def manifest_entry(
    key: str,
    display_name: str,
    classifier: str,
    explainer: str,
    revision: str | None = None,
    target_layer: str | None = None,
) -> str:
    """A [[models]] table of a manifest (checkpoints/manifest.toml; ptame.serving.manifest.ModelEntry's fields).

    Args:
        key: the entry's key. display_name: its name in the app.
        classifier: a ``create_backbone`` name. explainer: a folder (relative to the manifest)
            or a Hub repo id. revision: the Hub commit to pin (None: a comment asks for one).
        target_layer: the classifier's CAM layer, if not its default.

    Returns:
        TOML text, without a trailing newline.
    """
    pin = f"explainer_revision = {json.dumps(revision)}" if revision else '# explainer_revision = "COMMIT"'
    return "\n".join(
        [
            "[[models]]",
            f"key = {json.dumps(key)}",
            f"display_name = {json.dumps(display_name)}",
            f"classifier = {json.dumps(classifier)}",
            f"explainer = {json.dumps(explainer)}",
            pin,
            *([f"target_layer = {json.dumps(target_layer)}"] if target_layer else []),
        ]
    )


def train_into_new_folder(out: Path, threads: int, train_into: Callable[[Path], dict[str, dict]]) -> dict[str, dict]:
    """Run ``train_into(staging)`` with ``threads`` CPU threads in a temporary folder next to
    ``out``, then swap it in for ``out`` (``ptame.files.replace_folder``): an interrupted run
    leaves ``out`` as it was.

    Returns:
        What ``train_into`` returns (each network's metrics).

    Raises:
        FileNotFoundError: ``out``'s parent folder does not exist.
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder {out.parent} (parent of --out) does not exist")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)
    try:
        metrics = train_into(staging)
        replace_folder(staging, out)
    finally:
        torch.set_num_threads(previous_threads)
        shutil.rmtree(staging, ignore_errors=True)
    return metrics


def add_world_arguments(parser: argparse.ArgumentParser, default_out: Path, default_threads: int) -> None:
    """--out, --seed and --threads of ``python -m train shapes`` and ``python -m train textures``."""
    parser.add_argument("--out", type=Path, default=default_out, help="folder to write (replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model initialisations (default 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads,
        help="CPU threads of the training process, besides one image-generating process (default 1; "
        "the same count reproduces the same weights)",
    )


def save_world_network(
    model: nn.Module,
    folder: Path,
    image_size: int,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    tag: str,
) -> None:
    """Save a synthetic world's network in timm's folder format (config.json + model.safetensors),
    with its class names and preprocessing (square ``image_size`` input, ``mean``/``std``, crop_pct
    1.0, bilinear) in its pretrained cfg, as ``create_backbone("local-dir:FOLDER")`` reads them."""
    preprocessing = {
        "tag": tag,
        "input_size": (3, image_size, image_size),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": mean,
        "std": std,
    }
    save_for_hf(
        model.eval(),
        str(folder),
        model_config={"label_names": list(class_names), "pretrained_cfg": preprocessing},
        safe_serialization=True,
    )
    (folder / "pytorch_model.bin").unlink(missing_ok=True)
