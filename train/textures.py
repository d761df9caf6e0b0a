"""Train the textures classifier and an auxiliary network, into one folder.

``python -m train textures --out runs/textures`` trains, from random initialisation and on
generated images (ptame.datasets.textures), a small classifier and a separately trained auxiliary
network of another architecture, both unlike the shapes demo's (ResNet-10-T). It writes

    OUT/classifier/  timm folder: config.json (class names, preprocessing) + model.safetensors
    OUT/auxiliary/   the same, for the auxiliary network (P-TAME reads its layers 1-4)

each with a metrics.json (measured on the first 500 test images) and a model card (README.md).
Everything is written to a temporary folder next to OUT and renamed into place at the end, so
an interrupted run leaves OUT as it was. Seeded and deterministic: a rerun with the same thread
count gives the same weights.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ptame import create_backbone
from ptame.datasets.textures import TEXTURE_CLASSES, TEXTURES_MEAN, TEXTURES_STD, TexturesDataset
from ptame.perturb import normalize
from train.runs import add_world_arguments, save_world_network, train_into_new_folder
from train.shapes import cutout_views, masked_views

# The classifier is a RegNetX-200MF of reduced widths (16, 40, 96, 248 channels); the auxiliary
# network a MobileNetV3-Small at half width (layers 1-4: 8, 16, 24, 288 channels). Both have
# feature levels 1-4 at strides 4, 8, 16, 32.
CLASSIFIER_ARCHITECTURE = "regnetx_002"
CLASSIFIER_ARGS = {"w0": 16, "wa": 24.0, "wm": 2.49}
AUXILIARY_ARCHITECTURE = "mobilenetv3_small_050"
AUXILIARY_ARGS: dict = {}


@dataclasses.dataclass(frozen=True)
class TexturesRecipe:
    """Sizes and optimisation settings of one training run.

    The classifier and the auxiliary network each train on their own, disjoint range of training
    images (the classifier on the first ones); every batch is new. All steps are at full size:
    downsampling would blur the finest textures (4.5-pixel periods) away. ``workers`` DataLoader
    processes generate the images while the main process trains with ``threads`` CPU threads
    (1 + 1: two cores). A rerun with the same threads gives the same weights.

    The classifier (only) is also trained for the images P-TAME's masking shows it, as the shapes
    classifier is (``train.shapes.ShapesRecipe``): a ``masked_share`` of each batch is masked by
    ``masked_views`` (the object kept, on black or on parts of its background); the first
    ``cutout_share`` of each batch is added again with its object cut out (``cutout_views``), and
    an all-black image is added too, both trained towards the uniform distribution with weight
    ``blank_weight``.
    """

    image_size: int = 96
    batch_size: int = 32
    classifier_steps: int = 900
    auxiliary_steps: int = 900
    network_lr: float = 3e-3
    network_weight_decay: float = 0.05
    masked_share: float = 0.5
    cutout_share: float = 0.25
    blank_weight: float = 0.5
    test_images: int = 500
    seed: int = 0
    workers: int = 1
    threads: int = 1


def image_batches(start: int, count: int, recipe: TexturesRecipe, split: str = "train") -> DataLoader:
    """``count`` consecutive images of a split from index ``start``, in order, in batches.

    Yields (pixels (B, 3, S, S) in [0, 1], labels (B,) int64, masks (B, S, S) bool).
    """
    dataset = TexturesDataset(split, count, recipe.image_size, start=start)
    return DataLoader(dataset, batch_size=recipe.batch_size, shuffle=False, num_workers=recipe.workers)


def train_network(
    model: nn.Module,
    batches: DataLoader,
    recipe: TexturesRecipe,
    description: str,
    masking_robust: bool = False,
    progress: bool = True,
) -> list[float]:
    """Supervised training of a textures network (AdamW, one OneCycle schedule stepped per batch).

    Args:
        model: normalised (B, 3, S, S) -> (B, len(TEXTURE_CLASSES)) logits.
        batches: from ``image_batches``, one batch per step.
        recipe: learning rate, weight decay and the masking settings.
        description: progress-bar label.
        masking_robust: train on masked views, cut-out views and a blank image too (``TexturesRecipe``).
        progress: show a progress bar.

    Returns:
        The training loss of every step.
    """
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.network_lr, weight_decay=recipe.network_weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.network_lr, total_steps=len(batches))
    cutouts = round(recipe.cutout_share * recipe.batch_size) if masking_robust else 0
    generator = torch.Generator().manual_seed(recipe.seed)
    side = recipe.image_size
    blank = torch.zeros(1 if masking_robust else 0, 3, side, side)
    uniform = torch.full((1, len(TEXTURE_CLASSES)), 1.0 / len(TEXTURE_CLASSES))
    losses = []
    with tqdm(batches, desc=description, unit="batch", disable=not progress) as bar:
        for pixels, labels, masks in bar:
            without_objects = cutout_views(pixels[:cutouts], masks[:cutouts], generator)
            if masking_robust:
                pixels = masked_views(pixels, masks, recipe.masked_share, generator)
            logits = model(normalize(torch.cat([pixels, without_objects, blank]), TEXTURES_MEAN, TEXTURES_STD))
            loss = F.cross_entropy(logits[: len(labels)], labels)
            no_object = logits[len(labels) :]
            if len(no_object):
                loss = loss + recipe.blank_weight * F.cross_entropy(no_object, uniform.expand(len(no_object), -1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def save_network(model: nn.Module, folder: Path, image_size: int) -> None:
    """Save a textures network in timm's folder format, with the textures class names and statistics."""
    save_world_network(model, folder, image_size, TEXTURE_CLASSES, TEXTURES_MEAN, TEXTURES_STD, tag="ptame_textures")


def network_accuracy(folder: Path, recipe: TexturesRecipe, progress: bool = True) -> float:
    """Test accuracy in [0, 1] of a saved textures network on the first ``recipe.test_images`` test
    images, loaded as the app loads a classifier."""
    backbone = create_backbone(f"local-dir:{folder}", pretrained=True)
    correct = 0
    batches = image_batches(0, recipe.test_images, recipe, split="test")
    with torch.no_grad():
        for pixels, labels, _ in tqdm(batches, desc=f"testing {folder.name}", unit="batch", disable=not progress):
            correct += (backbone.logits(pixels).argmax(dim=1) == labels).sum().item()
    return round(correct / recipe.test_images, 4)


def _network_card(part: str, metrics: dict, recipe: TexturesRecipe) -> str:
    role = (
        "The textures classifier. Besides the images themselves, it learnt from masked views of "
        f"{recipe.masked_share:.0%} of them (the object kept, the rest partly black), from "
        f"{recipe.cutout_share:.0%} of them again with the object cut out and from an all-black image, "
        "both with a uniform target, so that it reads the masked images that perturbation methods show it."
        if part == "classifier"
        else "The auxiliary network of a textures explainer: a feature extractor (layers 1-4), trained as a classifier."
    )
    size = f"{recipe.image_size}x{recipe.image_size}"
    return f"""---
library_name: timm
tags: [image-classification, synthetic, ptame]
---
# Textures {part}: `{metrics["architecture"]}` ({metrics["parameters"]:,} parameters), trained from scratch

{role} Trained by `python -m train textures` on {metrics["train_images"]} generated images of the
textures world (`ptame.datasets.textures`, {size}, classes: {", ".join(TEXTURE_CLASSES)});
random initialisation, no pretrained weights.

| test images | test accuracy |
|---|---|
| {metrics["test_images"]} | {metrics["test_accuracy"]:.4f} |

Load with `ptame.create_backbone("local-dir:PATH")` or `timm.create_model("local-dir:PATH", pretrained=True)`.
"""


def train_textures(out: Path, recipe: TexturesRecipe = TexturesRecipe(), progress: bool = True) -> dict[str, dict]:
    """Train the textures classifier and auxiliary network and write them to ``out`` (replacing it).

    Args:
        out: the folder to create (classifier/, auxiliary/); its parent must exist.
        recipe: sizes and settings.
        progress: show progress bars.

    Returns:
        The metrics of each network, as written to its metrics.json.
    """
    return train_into_new_folder(out, recipe.threads, lambda staging: _train_into(staging, recipe, progress))


def _train_into(folder: Path, recipe: TexturesRecipe, progress: bool) -> dict[str, dict]:
    parts = (
        ("classifier", CLASSIFIER_ARCHITECTURE, CLASSIFIER_ARGS, recipe.classifier_steps),
        ("auxiliary", AUXILIARY_ARCHITECTURE, AUXILIARY_ARGS, recipe.auxiliary_steps),
    )
    metrics: dict[str, dict] = {}
    start = 0
    for offset, (part, architecture, arguments, steps) in enumerate(parts):
        torch.manual_seed(recipe.seed + offset)
        model = timm.create_model(architecture, pretrained=False, num_classes=len(TEXTURE_CLASSES), **arguments)
        count = steps * recipe.batch_size
        losses = train_network(
            model, image_batches(start, count, recipe), recipe, f"training the {part}", part == "classifier", progress
        )
        save_network(model, folder / part, recipe.image_size)
        metrics[part] = {
            "architecture": architecture,
            "parameters": sum(parameter.numel() for parameter in model.parameters()),
            "train_images": count,
            "train_indices": [start, start + count],
            "final_train_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
            "test_images": recipe.test_images,
            "test_accuracy": network_accuracy(folder / part, recipe, progress),
        }
        (folder / part / "README.md").write_text(_network_card(part, metrics[part], recipe), encoding="utf-8")
        (folder / part / "metrics.json").write_text(json.dumps(metrics[part], indent=2) + "\n", encoding="utf-8")
        start += count
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m train textures``."""
    add_world_arguments(parser, Path("runs/textures"), TexturesRecipe.threads)


def run(args: argparse.Namespace) -> None:
    """Train the textures networks into ``args.out`` and print their metrics and wall time."""
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    start = time.perf_counter()
    recipe = dataclasses.replace(TexturesRecipe(), seed=args.seed, threads=args.threads)
    metrics = train_textures(args.out, recipe)
    minutes = (time.perf_counter() - start) / 60
    print(json.dumps(metrics, indent=2))
    print(f"wrote {args.out}/classifier, auxiliary in {minutes:.1f} minutes")
