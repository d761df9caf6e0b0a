import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file

from ptame.datasets.shapes import (
    INSET_DEPTH,
    MAX_AREA,
    MIN_AREA,
    SHAPE_CLASSES,
    SHAPES,
    SHAPES_MEAN,
    SHAPES_STD,
    ShapesDataset,
    shapes_sample,
)
from ptame.metrics import pointing_game
from ptame.serving.loader import load_model
from ptame.serving.manifest import ModelEntry, load_manifest
from tests.conftest import TRAINED_DEMO
from train.worlds import cutout_views, masked_views, train_world

needs_committed_checkpoint = pytest.mark.skipif(
    not (TRAINED_DEMO / "explainer" / "model.safetensors").is_file(),
    reason="checkpoints/shapes is not trained yet: python -m train shapes --out checkpoints/shapes",
)


def test_samples_are_deterministic_and_well_formed() -> None:
    first, again = shapes_sample(7, "train"), shapes_sample(7, "train")
    assert torch.equal(first.pixels, again.pixels) and torch.equal(first.mask, again.mask)
    assert first.label == again.label == 7 % len(SHAPE_CLASSES)
    assert first.pixels.shape == (3, 128, 128) and first.pixels.dtype == torch.float32
    assert first.mask.shape == (128, 128) and first.mask.dtype == torch.bool
    assert 0.0 <= first.pixels.min() and first.pixels.max() <= 1.0
    small = shapes_sample(7, "train", size=64)
    assert small.pixels.shape == (3, 64, 64) and small.mask.shape == (64, 64)


def test_splits_and_indices_give_different_images() -> None:
    images = [shapes_sample(index, split).pixels for split in ("train", "validation", "test") for index in (0, 6)]
    for i, one in enumerate(images):
        for other in images[i + 1 :]:
            assert not torch.allclose(one, other, atol=0.05)


def test_at_least_six_classes_cycle_through_the_indices() -> None:
    assert len(SHAPE_CLASSES) >= 6 and len(set(SHAPE_CLASSES)) == len(SHAPE_CLASSES)
    assert [shapes_sample(index).label for index in range(12)] == [*range(len(SHAPE_CLASSES))] * 2


@pytest.mark.parametrize("split", ["train", "test"])
def test_each_image_has_one_object_of_three_to_twelve_percent(split: str) -> None:
    for index in range(60):
        mask = shapes_sample(index, split).mask.numpy()
        assert MIN_AREA <= mask.mean() <= MAX_AREA
        # one connected object (8-connectivity), away from the borders
        components = _components(mask)
        assert components == 1, f"{split} image {index} has {components} objects"
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_every_object_is_solid() -> None:
    """No class has a hole: the background around an object is one region (4-connectivity, the
    dual of the object's 8), so a class's evidence lies on its mask (ptame.datasets.shapes.OUTLINES)."""
    for index in range(60):
        sample = shapes_sample(index)
        assert _components(~sample.mask.numpy(), 4) == 1, f"image {index} ({SHAPE_CLASSES[sample.label]}) has a hole"


def test_the_object_is_drawn_in_its_mask_in_two_colours() -> None:
    """The object's outer band is one colour and its inset (the same shape, inside it) another, up
    to noise; the band differs from the background around the object."""
    both_seen = 0
    for index in range(12):
        sample = shapes_sample(index)
        depth = cv2.distanceTransform(sample.mask.numpy().astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        inset_edge = INSET_DEPTH * depth.max()
        band = torch.from_numpy((depth >= 2) & (depth < inset_edge - 1.5))
        inset = torch.from_numpy(depth > inset_edge + 1.5)
        outside = _dilate(sample.mask, 3) & ~_dilate(sample.mask, 1)
        if band.sum() < 5 or inset.sum() < 5:
            continue
        both_seen += 1
        band_pixels, inset_pixels = sample.pixels[:, band], sample.pixels[:, inset]
        assert band_pixels.std(dim=1).max() < 0.06 and inset_pixels.std(dim=1).max() < 0.06
        assert (band_pixels.mean(dim=1) - inset_pixels.mean(dim=1)).norm() > 0.3
        assert (sample.pixels[:, outside].mean(dim=1) - band_pixels.mean(dim=1)).norm() > 0.15
    assert both_seen >= 10


def test_dataset_items_and_errors() -> None:
    dataset = ShapesDataset("validation", 5, size=64, start=3)
    assert len(dataset) == 5
    pixels, label, mask = dataset[1]
    expected = shapes_sample(4, "validation", 64)
    assert torch.equal(pixels, expected.pixels) and label == expected.label and torch.equal(mask, expected.mask)
    with pytest.raises(IndexError):
        dataset[5]
    with pytest.raises(ValueError, match="unknown split 'val'"):
        ShapesDataset("val", 5)
    with pytest.raises(ValueError, match="size must be >= 32"):
        shapes_sample(0, size=16)
    with pytest.raises(ValueError, match="index must be >= 0"):
        shapes_sample(-1)


def _components(mask: np.ndarray, connectivity: int = 8) -> int:
    count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=connectivity)
    return count - 1


def _dilate(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    size = 2 * pixels + 1
    grown = torch.nn.functional.max_pool2d(mask[None, None].float(), size, stride=1, padding=pixels)
    return grown[0, 0].bool()


def _batch(count: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [shapes_sample(index, "train", size) for index in range(count)]
    return torch.stack([sample.pixels for sample in samples]), torch.stack([sample.mask for sample in samples])


def test_masked_views_keep_the_object_and_darken_only_elsewhere() -> None:
    pixels, masks = _batch(16)
    views = masked_views(pixels, masks, 1.0, torch.Generator().manual_seed(0))
    objects = masks[:, None].expand_as(pixels)
    assert torch.equal(views[objects], pixels[objects])
    assert (views <= pixels).all() and (views >= 0).all()
    darkened = (views < pixels - 0.01).flatten(1).any(dim=1)
    assert darkened.all()  # every image is masked somewhere around its object
    again = masked_views(pixels, masks, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(views, again)


def test_masked_views_mask_about_their_share_of_the_images() -> None:
    pixels, masks = _batch(64, 32)
    assert torch.equal(masked_views(pixels, masks, 0.0, torch.Generator().manual_seed(0)), pixels)
    views = masked_views(pixels, masks, 0.5, torch.Generator().manual_seed(1))
    changed = (views != pixels).flatten(1).any(dim=1).sum().item()
    assert 20 <= changed <= 44


def test_cutout_views_black_out_the_object_with_a_margin_and_keep_the_rest() -> None:
    pixels, masks = _batch(12)
    views = cutout_views(pixels, masks, torch.Generator().manual_seed(0))
    for view, image, mask in zip(views, pixels, masks):
        assert (view[:, _dilate(mask, 1)] == 0).all()
        far = ~_dilate(mask, 3)
        assert torch.equal(view[:, far], image[:, far])
    assert torch.equal(views, cutout_views(pixels, masks, torch.Generator().manual_seed(0)))


TINY = dataclasses.replace(
    SHAPES,
    image_size=64,
    recipe=dataclasses.replace(
        SHAPES.recipe,
        batch_size=8,
        classifier_schedule=((32, 2), (64, 2)),
        auxiliary_schedule=((64, 2),),
        explainer_steps=3,
        test_images=8,
        workers=0,
    ),
)
PARTS = ("classifier", "auxiliary", "explainer")
PART_FILES = ["README.md", "config.json", "metrics.json", "model.safetensors"]


def test_training_pipeline_end_to_end_on_a_tiny_recipe(tmp_path: Path) -> None:
    """The code path of `python -m train shapes`, tiny: three loadable parts, relocatable."""
    metrics = train_world(TINY, tmp_path / "shapes", progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shapes"]  # no temporary folder left
    bundle = tmp_path / "shapes"
    assert sorted(path.name for path in bundle.iterdir()) == ["auxiliary", "classifier", "explainer"]
    for part in PARTS:
        assert sorted(path.name for path in (bundle / part).iterdir()) == PART_FILES
        assert json.loads((bundle / part / "metrics.json").read_text()) == metrics[part]
    explainer_metrics = metrics["explainer"]
    for key in ("classifier_accuracy", "pointing_game", "energy_pointing_game"):
        assert 0.0 <= explainer_metrics[key] <= 1.0
    for key in ("ad_100", "ic_100", "ad_50", "ic_50", "ad_15", "ic_15"):
        assert 0.0 <= explainer_metrics[key] <= 100.0
    config = json.loads((bundle / "explainer" / "config.json").read_text())
    assert config["auxiliary"] == "local-dir:../auxiliary"

    moved = Path(shutil.move(bundle, tmp_path / "elsewhere"))
    loaded = load_model(ModelEntry.from_folder(moved))
    assert loaded.backbone.class_names == list(SHAPE_CLASSES)
    assert loaded.explainer.class_names == list(SHAPE_CLASSES)
    preprocessing = loaded.backbone.preprocessing
    assert (preprocessing.resize, preprocessing.crop) == (64, 64)
    assert preprocessing.mean == SHAPES_MEAN and preprocessing.std == SHAPES_STD
    pixels = torch.stack([shapes_sample(index, "test", 64).pixels for index in range(2)])
    with torch.no_grad():
        maps = loaded.explainer.explain(pixels, loaded.backbone.logits(pixels).argmax(dim=1))
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1


def test_training_is_reproducible(tmp_path: Path) -> None:
    for name in ("first", "second"):
        train_world(TINY, tmp_path / name, progress=False)
    for part in PARTS:
        first = load_file(tmp_path / "first" / part / "model.safetensors")
        second = load_file(tmp_path / "second" / part / "model.safetensors")
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first)


def test_a_failed_run_leaves_the_previous_checkpoint_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "shapes"
    out.mkdir()
    (out / "previous.txt").write_text("the previous checkpoint")

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("train.worlds.explainer_figures", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_world(TINY, out, progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shapes"]
    assert [path.name for path in out.iterdir()] == ["previous.txt"]


@needs_committed_checkpoint
def test_the_committed_checkpoint_is_accurate_small_and_reproducible_in_its_metrics() -> None:
    metrics = {part: json.loads((TRAINED_DEMO / part / "metrics.json").read_text()) for part in PARTS}
    assert metrics["classifier"]["test_images"] == metrics["explainer"]["test_images"] == 500
    assert metrics["classifier"]["test_accuracy"] >= 0.99  # committed: 0.992
    assert metrics["explainer"]["classifier_accuracy"] == metrics["classifier"]["test_accuracy"]
    size = sum(path.stat().st_size for path in TRAINED_DEMO.rglob("*") if path.is_file())
    assert size <= 25 * 2**20


@needs_committed_checkpoint
def test_the_committed_classifier_sees_no_class_in_a_black_image() -> None:
    """P-TAME's empty map is a black image: it must not keep any class (WorldRecipe.blank_weight)."""
    loaded = load_model(load_manifest()[0])
    with torch.no_grad():
        probabilities = loaded.backbone.logits(torch.zeros(1, 3, 128, 128)).softmax(dim=1)
    assert probabilities.max() < 0.3


@needs_committed_checkpoint
def test_the_committed_classifier_sees_no_class_in_an_object_shaped_hole() -> None:
    """Cut-out objects must not keep their class (WorldRecipe.cutout_share): the classifier's
    evidence is the object itself, not the background around its outline."""
    loaded = load_model(load_manifest()[0])
    samples = [shapes_sample(index, "test") for index in range(24)]
    pixels = torch.stack([sample.pixels for sample in samples])
    masks = torch.stack([sample.mask for sample in samples])
    with torch.no_grad():
        whole = loaded.backbone.logits(pixels).softmax(dim=1)
        holes = loaded.backbone.logits(cutout_views(pixels, masks, torch.Generator().manual_seed(0))).softmax(dim=1)
    assert whole.max(dim=1).values.mean() > 0.9
    assert holes.max(dim=1).values.mean() < 0.3


@needs_committed_checkpoint
def test_the_committed_explainer_meets_the_pointing_target() -> None:
    """Pointing game near the committed figures: >= 0.98 on the 500 test images of metrics.json
    (committed 0.988), and on 120 of them recomputed here through the app's loader >= 0.975
    (measured 0.983: one more miss allowed for another CPU's rounding), every class >= 0.85
    (measured 0.90 to 1.0)."""
    metrics = json.loads((TRAINED_DEMO / "explainer" / "metrics.json").read_text())
    assert metrics["pointing_game"] >= 0.98
    loaded = load_model(load_manifest()[0])
    samples = [shapes_sample(index, "test") for index in range(120)]
    pixels = torch.stack([sample.pixels for sample in samples])
    masks = torch.stack([sample.mask for sample in samples])
    labels = torch.tensor([sample.label for sample in samples])
    with torch.no_grad():
        hits = pointing_game(loaded.explainer.explain(pixels, loaded.backbone.logits(pixels).argmax(dim=1)), masks)
    assert hits.float().mean() >= 0.975
    for label, name in enumerate(SHAPE_CLASSES):
        assert hits[labels == label].float().mean() >= 0.85, name


@needs_committed_checkpoint
def test_the_committed_checkpoint_loads_offline_and_points_at_the_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the app's loader, with the Hub off: the maps of fixed test images, two of each
    class, peak on their objects."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    entry = load_manifest()[0]
    assert entry.key == "shapes"
    loaded = load_model(entry)
    samples = [shapes_sample(index, "test") for index in range(12)]
    pixels = torch.stack([sample.pixels for sample in samples])
    masks = torch.stack([sample.mask for sample in samples])
    with torch.no_grad():
        predictions = loaded.backbone.logits(pixels).argmax(dim=1)
        maps = loaded.explainer.explain(pixels, predictions)
    assert predictions.tolist() == [sample.label for sample in samples]
    assert pointing_game(maps, masks).all()
