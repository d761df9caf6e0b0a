"""Train the offline shapes demo: classifier, auxiliary network and P-TAME explainer, into one folder.

``python -m train shapes --out checkpoints/shapes`` trains, from random initialisation and on
generated images (ptame.datasets.shapes), a small classifier, a separately trained auxiliary network of
another architecture, and a P-TAME explainer of the classifier (a black box to it). It writes

    OUT/classifier/  timm folder: config.json (class names, preprocessing) + model.safetensors
    OUT/auxiliary/   the same, for the auxiliary network
    OUT/explainer/   PTAME: config.json (auxiliary = "local-dir:../auxiliary") + model.safetensors

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

from ptame import PTAME, Backbone, TrainSettings, create_backbone, train_explainer
from ptame.datasets.shapes import SHAPE_CLASSES, SHAPES_MEAN, SHAPES_STD, ShapesDataset
from ptame.metrics import ad_ic, energy_pointing_game, pointing_game
from ptame.perturb import normalize
from train.runs import add_world_arguments, save_world_network, train_into_new_folder

# Both are ResNet-10-T with a 16-channel stem, of different widths: the classifier has half the
# standard width, the auxiliary network a quarter.
CLASSIFIER_ARCHITECTURE = "resnet10t"
CLASSIFIER_ARGS = {"channels": (32, 64, 128, 256), "stem_width": 16}
AUXILIARY_ARCHITECTURE = "resnet10t"
AUXILIARY_ARGS = {"channels": (16, 32, 64, 128), "stem_width": 16}
FEATURE_LEVELS = (1, 2, 3, 4)  # ResNet layer1..layer4: strides 4, 8, 16, 32
AD_IC_FRACTIONS = (1.0, 0.5, 0.15)  # the method doc's AD/IC at 100%, 50%, 15%


@dataclasses.dataclass(frozen=True)
class ShapesRecipe:
    """Sizes and optimisation settings of one training run.

    The classifier, the auxiliary network and the explainer each train on their own, disjoint
    range of training images; every batch is new. The two networks follow a resolution schedule
    of (side, steps) phases: images are area-downsampled to ``side`` pixels in the first phases
    (progressive resizing), which is 4x cheaper at 64 pixels and gets a randomly initialised
    network past its first plateau far sooner than at full size; the last phase is at full size.
    ``workers`` DataLoader processes generate the images while the main process trains with
    ``threads`` CPU threads (1 + 1: two cores). A rerun with the same threads gives the same weights.

    The classifier (only) is also trained for the images P-TAME's masking shows it: a
    ``masked_share`` of each batch is masked by ``masked_views`` (the object kept, on black or on
    parts of its background); the first ``cutout_share`` of each batch is added again with its
    object cut out (``cutout_views``), and an all-black image is added too, both trained towards
    the uniform distribution with weight ``blank_weight``. Measured on one-colour objects (before
    the inset of ``ptame.datasets.shapes``): without the masked views and the black image, the classifier
    called an all-black image a triangle (p 0.64), so an empty map "explained" every triangle;
    P-TAME's pointing game was 0.57, with them 0.70. The cut-outs teach it that an object-shaped
    hole is no object: its evidence is the object's own pixels, not the background around the
    outline (with the explainer's recipe unchanged: AD 50% 8.8 -> 4.4, pointing 0.70 -> 0.72). The
    explainer's area weight is 4 (pointing 0.72 at 1, 0.74 at 2, 0.75 at 4, 0.73 at 8; on
    two-colour objects with a ring class 0.84 at 4 and 0.85 at 8; the committed run, on solid
    shapes only, 0.98 at 4; README, The shapes world).
    """

    image_size: int = 128
    batch_size: int = 32
    classifier_schedule: tuple[tuple[int, int], ...] = ((64, 1500), (128, 600))
    auxiliary_schedule: tuple[tuple[int, int], ...] = ((64, 900), (128, 300))
    explainer_steps: int = 800
    network_lr: float = 3e-3
    network_weight_decay: float = 0.05
    masked_share: float = 0.5
    cutout_share: float = 0.25
    blank_weight: float = 0.5
    explainer: TrainSettings = TrainSettings(amp=False)  # ptame's default recipe (zero fuser start, lr 1e-3, ...)
    test_images: int = 500
    seed: int = 0
    workers: int = 1
    threads: int = 1


def image_batches(start: int, count: int, recipe: ShapesRecipe, split: str = "train") -> DataLoader:
    """``count`` consecutive images of a split from index ``start``, in order, in batches.

    Yields (pixels (B, 3, S, S) in [0, 1], labels (B,) int64, masks (B, S, S) bool).
    """
    dataset = ShapesDataset(split, count, recipe.image_size, start=start)
    return DataLoader(dataset, batch_size=recipe.batch_size, shuffle=False, num_workers=recipe.workers)


def _grown(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """(B, S, S) bool masks grown by ``pixels`` pixels (a square neighbourhood) -> (B, 1, S, S) float in {0, 1}."""
    return F.max_pool2d(masks[:, None].float(), 2 * pixels + 1, stride=1, padding=pixels)


def masked_views(pixels: torch.Tensor, masks: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Images of which a random ``share`` are multiplied by a random smooth mask that keeps their object.

    The mask is the larger of a RISE-like field (a random 3..8-cell binary grid, bilinearly
    upsampled) and the object's mask grown by 0..3 pixels, so the object stays whole, on black or
    on parts of its background: the kind of image P-TAME's masking shows the classifier.

    Args:
        pixels: (B, 3, S, S) in [0, 1].
        masks: (B, S, S) bool, the objects.
        share: in [0, 1], the expected share of masked images.
        generator: the source of randomness (CPU).

    Returns:
        (B, 3, S, S) in [0, 1].
    """
    count, size = pixels.shape[0], pixels.shape[-1]
    chosen = torch.rand(count, generator=generator) < share
    fields = []
    for _ in range(count):
        cells = int(torch.randint(3, 9, (1,), generator=generator))
        grid = (torch.rand(1, 1, cells, cells, generator=generator) < 0.5).float()
        fields.append(F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False))
    field = torch.cat(fields)
    grow = int(torch.randint(0, 4, (1,), generator=generator))
    keep = torch.maximum(field, _grown(masks, grow))
    return torch.where(chosen[:, None, None, None], pixels * keep, pixels)


def cutout_views(pixels: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The images with their object cut out: black on the object's mask grown by 1..3 pixels.

    Args:
        pixels: (B, 3, S, S) in [0, 1].
        masks: (B, S, S) bool, the objects.
        generator: the source of randomness (CPU).

    Returns:
        (B, 3, S, S) in [0, 1], the object's pixels and a 1..3 pixel margin around them black.
    """
    grow = int(torch.randint(1, 4, (1,), generator=generator))
    return pixels * (1 - _grown(masks, grow))


def train_network(
    model: nn.Module,
    batches: DataLoader,
    schedule: tuple[tuple[int, int], ...],
    recipe: ShapesRecipe,
    description: str,
    masking_robust: bool = False,
    progress: bool = True,
) -> list[float]:
    """Supervised training of a shapes classifier (AdamW, one OneCycle schedule stepped per batch).

    Args:
        model: normalised (B, 3, s, s) -> (B, len(SHAPE_CLASSES)) logits, for any side s.
        batches: from ``image_batches``, one batch per step of the schedule.
        schedule: (side, steps) phases; each batch is area-downsampled to the phase's side.
        recipe: learning rate and weight decay.
        description: progress-bar label.
        masking_robust: train on masked views, cut-out views and a blank image too (``ShapesRecipe``).
        progress: show a progress bar.

    Returns:
        The training loss of every step.
    """
    sides = [side for side, steps in schedule for _ in range(steps)]
    if len(batches) != len(sides):
        raise ValueError(f"{len(batches)} batches for a schedule of {len(sides)} steps")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.network_lr, weight_decay=recipe.network_weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.network_lr, total_steps=len(sides))
    masked_share = recipe.masked_share if masking_robust else 0.0
    blank_weight = recipe.blank_weight if masking_robust else 0.0
    cutouts = round(recipe.cutout_share * recipe.batch_size) if blank_weight > 0 else 0
    generator = torch.Generator().manual_seed(recipe.seed)
    blank = torch.zeros(1, 3, 1, 1)
    uniform = torch.full((1, len(SHAPE_CLASSES)), 1.0 / len(SHAPE_CLASSES))
    losses = []
    with tqdm(zip(batches, sides), total=len(sides), desc=description, unit="batch", disable=not progress) as bar:
        for (pixels, labels, masks), side in bar:
            without_objects = cutout_views(pixels[:cutouts], masks[:cutouts], generator)
            if masked_share > 0:
                pixels = masked_views(pixels, masks, masked_share, generator)
            pixels = torch.cat([pixels, without_objects])
            if side != pixels.shape[-1]:
                pixels = F.interpolate(pixels, size=(side, side), mode="area")
            if blank_weight > 0:
                pixels = torch.cat([pixels, blank.expand(1, 3, side, side)])
            logits = model(normalize(pixels, SHAPES_MEAN, SHAPES_STD))
            loss = F.cross_entropy(logits[: len(labels)], labels)
            if blank_weight > 0:
                no_object = logits[len(labels) :]
                loss = loss + blank_weight * F.cross_entropy(no_object, uniform.expand(len(no_object), -1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(side=side, loss=f"{losses[-1]:.3f}")
    return losses


def save_network(model: nn.Module, folder: Path, image_size: int) -> None:
    """Save a shapes network in timm's folder format, with the shapes class names and statistics."""
    save_world_network(model, folder, image_size, SHAPE_CLASSES, SHAPES_MEAN, SHAPES_STD, tag="ptame_shapes")


@torch.no_grad()
def evaluate(backbone: Backbone, explainer: PTAME, recipe: ShapesRecipe, progress: bool = True) -> dict[str, float]:
    """Accuracy and explanation quality on the first ``recipe.test_images`` test images (ptame.metrics).

    Maps are the explainer's for the classifier's own prediction (the protocol's target, and the
    map the app shows). Returns the means of accuracy, pointing_game, energy_pointing_game (in
    [0, 1]) and ad_100, ic_100, ad_50, ic_50, ad_15, ic_15 (percent).
    """
    totals: dict[str, float] = {}
    batches = image_batches(0, recipe.test_images, recipe, split="test")
    for pixels, labels, masks in tqdm(batches, desc="evaluating", unit="batch", disable=not progress):
        predictions = backbone.logits(pixels).argmax(dim=1)
        maps = explainer.explain(pixels, predictions)
        terms = {
            "accuracy": predictions == labels,
            "pointing_game": pointing_game(maps, masks),
            "energy_pointing_game": energy_pointing_game(maps, masks),
        }
        for key, values in ad_ic(backbone, pixels, maps, predictions, AD_IC_FRACTIONS).items():
            terms[key] = values * 100 if key.startswith("ic_") else values
        for key, values in terms.items():
            totals[key] = totals.get(key, 0.0) + values.float().sum().item()
    return {key: round(value / recipe.test_images, 4) for key, value in totals.items()}


def network_accuracy(folder: Path, recipe: ShapesRecipe, progress: bool = True) -> float:
    """Test accuracy in [0, 1] of a saved shapes classifier, loaded as the app loads it."""
    backbone = create_backbone(f"local-dir:{folder}", pretrained=True)
    correct = 0
    batches = image_batches(0, recipe.test_images, recipe, split="test")
    with torch.no_grad():
        for pixels, labels, _ in tqdm(batches, desc=f"testing {folder.name}", unit="batch", disable=not progress):
            correct += (backbone.logits(pixels).argmax(dim=1) == labels).sum().item()
    return round(correct / recipe.test_images, 4)


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _network_card(part: str, architecture: str, metrics: dict, recipe: ShapesRecipe) -> str:
    role = (
        "The classifier that the shapes demo explains. Besides the images themselves, it learnt from "
        f"masked views of {recipe.masked_share:.0%} of them (the object kept, the rest partly black), "
        f"from {recipe.cutout_share:.0%} of them again with the object cut out and from an all-black image, "
        "both with a uniform target, so that it reads the masked images that perturbation methods show "
        "it (an object on black is its class; black, or an object-shaped hole, is no class)."
        if part == "classifier"
        else "The auxiliary network of the shapes explainer: a feature extractor only (layers 1-4)."
    )
    size = f"{recipe.image_size}x{recipe.image_size}"
    return f"""---
library_name: timm
tags: [image-classification, synthetic, ptame]
---
# Shapes {part}: `{architecture}`, trained from scratch

{role} Trained by `python -m train shapes` on
{metrics["train_images"]} generated images of the shapes world (`ptame.datasets.shapes`, {size},
classes: {", ".join(SHAPE_CLASSES)}); random initialisation, no pretrained weights.

| test images | test accuracy |
|---|---|
| {metrics["test_images"]} | {metrics["test_accuracy"]:.4f} |

Load with `ptame.create_backbone("local-dir:PATH")` or `timm.create_model("local-dir:PATH", pretrained=True)`.
"""


def _explainer_card(metrics: dict, recipe: ShapesRecipe) -> str:
    loss = recipe.explainer.loss
    columns = [
        "pointing_game",
        "energy_pointing_game",
        *(f"{kind}_{round(100 * f)}" for f in AD_IC_FRACTIONS for kind in ("ad", "ic")),
    ]
    table = "\n".join(
        [" | ".join(columns), " | ".join("---" for _ in columns), " | ".join(f"{metrics[key]:g}" for key in columns)]
    )
    return f"""---
library_name: ptame
tags: [explainability, saliency, p-tame, synthetic]
---
# P-TAME explainer of the shapes classifier

A P-TAME attention head (arXiv 2501.17813) on the features of `../auxiliary`, trained by
`python -m train shapes` against `../classifier` as a black box (its predictions only) on
{metrics["train_images"]} generated images. Load with `ptame.PTAME.from_pretrained(PATH)`.

Training: the fuser starts at zero (every map 0.5), then {recipe.explainer_steps} steps of {recipe.batch_size} images,
AdamW (amsgrad), OneCycle with max lr
{recipe.explainer.lr}, weight decay {recipe.explainer.weight_decay}; loss ce {loss.ce}, area {loss.area},
smooth {loss.smooth}, p {loss.area_power}, q {loss.smooth_power}, border {loss.border}.

On the first {metrics["test_images"]} test images, with the maps of the classifier's prediction (classifier
accuracy {metrics["classifier_accuracy"]:g}):

{table}

Pointing game: the share of maps whose maximum lies on the object's mask. Energy pointing game:
the share of the map's sum on the mask. AD / IC at 100, 50, 15% (method doc): keep the top X% of
the map with its values, multiply the image by it, and compare the class probability with the
clean image's (AD: mean relative drop, lower is better; IC: % of images whose probability rises,
higher is better).
"""


def train_shapes(out: Path, recipe: ShapesRecipe = ShapesRecipe(), progress: bool = True) -> dict[str, dict]:
    """Train the three parts of the shapes demo and write them to ``out`` (replacing it).

    Args:
        out: the folder to create (classifier/, auxiliary/, explainer/); its parent must exist.
        recipe: sizes and settings (tests use a tiny one).
        progress: show progress bars.

    Returns:
        The metrics of each part, as written to its metrics.json.
    """
    return train_into_new_folder(out, recipe.threads, lambda staging: _train_into(staging, recipe, progress))


def _train_into(folder: Path, recipe: ShapesRecipe, progress: bool) -> dict[str, dict]:
    classes = len(SHAPE_CLASSES)
    schedules = {"classifier": recipe.classifier_schedule, "auxiliary": recipe.auxiliary_schedule}
    sizes = {part: sum(steps for _, steps in schedule) * recipe.batch_size for part, schedule in schedules.items()}
    sizes["explainer"] = recipe.explainer_steps * recipe.batch_size
    starts = {"classifier": 0, "auxiliary": sizes["classifier"], "explainer": sizes["classifier"] + sizes["auxiliary"]}
    metrics: dict[str, dict] = {}

    for offset, (part, architecture, arguments) in enumerate(
        (
            ("classifier", CLASSIFIER_ARCHITECTURE, CLASSIFIER_ARGS),
            ("auxiliary", AUXILIARY_ARCHITECTURE, AUXILIARY_ARGS),
        )
    ):
        torch.manual_seed(recipe.seed + offset)
        model = timm.create_model(architecture, pretrained=False, num_classes=classes, **arguments)
        batches = image_batches(starts[part], sizes[part], recipe)
        losses = train_network(
            model, batches, schedules[part], recipe, f"training the {part}", part == "classifier", progress
        )
        save_network(model, folder / part, recipe.image_size)
        metrics[part] = {
            "architecture": architecture,
            "train_images": sizes[part],
            "final_train_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
            "test_images": recipe.test_images,
            "test_accuracy": network_accuracy(folder / part, recipe, progress),
        }

    torch.manual_seed(recipe.seed + 2)
    backbone = create_backbone(f"local-dir:{folder / 'classifier'}", pretrained=True)
    explainer = PTAME(
        num_classes=classes,
        auxiliary="local-dir:../auxiliary",
        feature_levels=FEATURE_LEVELS,
        auxiliary_mean=SHAPES_MEAN,
        auxiliary_std=SHAPES_STD,
        class_names=SHAPE_CLASSES,
        auxiliary_root=folder / "explainer",
    )
    history = train_explainer(
        backbone.model,
        explainer,
        image_batches(starts["explainer"], sizes["explainer"], recipe),
        SHAPES_MEAN,
        SHAPES_STD,
        recipe.explainer,
        progress=progress,
    )
    explainer.save_pretrained(folder / "explainer")
    saved = PTAME.from_pretrained(folder / "explainer")
    evaluation = evaluate(backbone, saved, recipe, progress)
    metrics["explainer"] = {
        "train_images": sizes["explainer"],
        "final_train_loss": round(history[-1]["loss"], 4),
        "test_images": recipe.test_images,
        "classifier_accuracy": evaluation.pop("accuracy"),
        **evaluation,
        "settings": {
            "lr": recipe.explainer.lr,
            "weight_decay": recipe.explainer.weight_decay,
            **recipe.explainer.loss.as_dict(),
        },
    }

    for part in ("classifier", "auxiliary"):
        card = _network_card(part, metrics[part]["architecture"], metrics[part], recipe)
        (folder / part / "README.md").write_text(card, encoding="utf-8")
    (folder / "explainer" / "README.md").write_text(_explainer_card(metrics["explainer"], recipe), encoding="utf-8")
    for part, values in metrics.items():
        _write_json(folder / part / "metrics.json", values)
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m train shapes``."""
    add_world_arguments(parser, Path("checkpoints/shapes"), ShapesRecipe.threads)


def run(args: argparse.Namespace) -> None:
    """Train the shapes demo into ``args.out`` and print its metrics and wall time."""
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    start = time.perf_counter()
    recipe = dataclasses.replace(ShapesRecipe(), seed=args.seed, threads=args.threads)
    metrics = train_shapes(args.out, recipe)
    minutes = (time.perf_counter() - start) / 60
    print(json.dumps(metrics, indent=2))
    print(f"wrote {args.out}/classifier, auxiliary, explainer in {minutes:.1f} minutes")
