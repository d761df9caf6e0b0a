import argparse
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from ptame import create_backbone
from ptame.datasets.shapes import shapes_sample
from ptame.datasets.textures import (
    MAX_AREA,
    MIN_AREA,
    TEXTURE_CLASSES,
    TEXTURES,
    TEXTURES_MEAN,
    TEXTURES_STD,
    TexturesDataset,
    textures_sample,
)
from train.commands import images
from train.worlds import image_ranges, train_world

# The gradient orientation of each striped class (angle of the gradient in image coordinates, x
# right and y down, modulo 180 degrees): stripes run across their gradient.
STRIPE_GRADIENTS = {
    "horizontal stripes": 90.0,
    "vertical stripes": 0.0,
    "rising diagonals": 45.0,
    "falling diagonals": 135.0,
}


def gradients(index: int) -> tuple[np.ndarray, np.ndarray]:
    """The brightness gradient (gx, gy), each (N,), inside a training image's object: on its mask
    shrunk by 2 pixels, away from the object's outline."""
    sample = textures_sample(index, "train")
    brightness = sample.pixels.permute(1, 2, 0).numpy() @ np.array([0.299, 0.587, 0.114], np.float32)
    gx, gy = cv2.Sobel(brightness, cv2.CV_32F, 1, 0), cv2.Sobel(brightness, cv2.CV_32F, 0, 1)
    inside = cv2.erode(sample.mask.numpy().astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    return gx[inside], gy[inside]


def structure(index: int) -> tuple[float, float]:
    """(dominant gradient angle in degrees in [0, 180), coherence in [0, 1]) of the texture inside a
    training image's object, from the structure tensor summed over the object."""
    gx, gy = gradients(index)
    xx, yy, xy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    angle = np.degrees(0.5 * np.arctan2(2 * xy, xx - yy)) % 180
    return float(angle), float(np.hypot(xx - yy, 2 * xy) / (xx + yy))


def fourfold(index: int) -> float:
    """The energy-weighted mean of cos(4 theta) of the gradient angles theta inside a training
    image's object, in [-1, 1]: > 0 where edges run along the rows and columns, < 0 where they
    run along the diagonals."""
    gx, gy = gradients(index)
    energy = gx**2 + gy**2 + 1e-12
    return float((((gx**2 - gy**2) ** 2 - 4 * gx**2 * gy**2) / energy).sum() / energy.sum())


def test_samples_are_deterministic_and_well_formed() -> None:
    first, again = textures_sample(11, "train"), textures_sample(11, "train")
    assert torch.equal(first.pixels, again.pixels) and torch.equal(first.mask, again.mask)
    assert first.label == again.label == 11 % len(TEXTURE_CLASSES)
    assert first.pixels.shape == (3, 96, 96) and first.pixels.dtype == torch.float32
    assert first.mask.shape == (96, 96) and first.mask.dtype == torch.bool
    assert 0.0 <= first.pixels.min() and first.pixels.max() <= 1.0
    small = textures_sample(11, "train", size=64)
    assert small.pixels.shape == (3, 64, 64) and small.mask.shape == (64, 64)
    pixels, label, mask = TexturesDataset("train", 4, start=9)[2]
    assert torch.equal(pixels, first.pixels) and label == first.label and torch.equal(mask, first.mask)


def test_splits_and_indices_give_different_images() -> None:
    images = [textures_sample(index, split).pixels for split in ("train", "validation", "test") for index in (0, 8)]
    for i, one in enumerate(images):
        for other in images[i + 1 :]:
            assert not torch.allclose(one, other, atol=0.05)


def test_each_image_has_one_object_of_four_to_fifteen_percent() -> None:
    for index in range(50):
        mask = textures_sample(index, "validation").mask.numpy()
        assert MIN_AREA <= mask.mean() <= MAX_AREA
        components, _ = cv2.connectedComponents(mask.astype(np.uint8))
        assert components == 2  # the background and one object


def test_all_eight_classes_appear_in_eighty_images() -> None:
    assert len(TEXTURE_CLASSES) == 8 == len(set(TEXTURE_CLASSES))
    labels = [textures_sample(index, "test").label for index in range(80)]
    assert np.bincount(labels, minlength=8).tolist() == [10] * 8


@pytest.mark.parametrize("name", list(STRIPE_GRADIENTS))
def test_striped_objects_have_their_class_orientation(name: str) -> None:
    label = TEXTURE_CLASSES.index(name)
    for index in range(label, 80, len(TEXTURE_CLASSES)):
        angle, coherence = structure(index)
        error = abs((angle - STRIPE_GRADIENTS[name] + 90) % 180 - 90)
        assert error < 15 and coherence > 0.8, (index, angle, coherence)


def test_two_dimensional_textures_have_no_dominant_orientation() -> None:
    for name in ("dots", "checkerboard", "rings", "crosshatch"):
        label = TEXTURE_CLASSES.index(name)
        for index in range(label, 80, len(TEXTURE_CLASSES)):
            assert structure(index)[1] < 0.4, (name, index)


def test_checkerboard_edges_run_straight_and_crosshatch_lines_diagonally() -> None:
    checkerboards = [fourfold(index) for index in range(TEXTURE_CLASSES.index("checkerboard"), 80, 8)]
    crosshatches = [fourfold(index) for index in range(TEXTURE_CLASSES.index("crosshatch"), 80, 8)]
    assert min(checkerboards) > 0 > max(crosshatches), (checkerboards, crosshatches)
    assert np.mean(checkerboards) > 0.2 and np.mean(crosshatches) < -0.2


@pytest.mark.slow
def test_channel_statistics_are_those_of_2000_training_images() -> None:
    pixels = torch.stack([textures_sample(index, "train").pixels for index in range(2000)])
    assert np.allclose(pixels.mean(dim=(0, 2, 3)), TEXTURES_MEAN, atol=6e-4)
    assert np.allclose(pixels.std(dim=(0, 2, 3)), TEXTURES_STD, atol=6e-4)


def write(out: Path, *options: str) -> None:
    parser = argparse.ArgumentParser()
    images.add_arguments(parser)
    images.run(parser.parse_args(["--out", str(out), *options]))


def test_images_command_writes_the_datasets_pictures(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "textures"
    write(out, "--world", "textures", "--split", "test", "--count", "5", "--start", "3")
    names = sorted(path.name for path in out.iterdir())
    assert names == [f"textures-test-{index:06d}.png" for index in range(3, 8)]
    for index, name in zip(range(3, 8), names):
        picture = np.asarray(Image.open(out / name).convert("RGB"), np.float32) / 255
        pixels = textures_sample(index, "test").pixels.permute(1, 2, 0).numpy()
        assert np.abs(picture - pixels).max() <= 0.5 / 255 + 1e-6
    assert [path.name for path in tmp_path.iterdir()] == ["nested"]  # no staging folder left

    empty = tmp_path / "empty"
    empty.mkdir()
    write(empty, "--world", "shapes", "--split", "validation", "--count", "1")
    saved = np.asarray(Image.open(empty / "shapes-validation-000000.png"))
    assert np.array_equal(saved, shapes_sample(0, "validation").picture())


def test_images_command_refuses_a_folder_with_files(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not an empty folder"):
        write(tmp_path / "out", "--world", "textures", "--split", "train", "--count", "2")
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_a_tiny_training_run_writes_loadable_networks(tmp_path: Path) -> None:
    recipe = dataclasses.replace(
        TEXTURES.recipe, classifier_schedule=((96, 3),), auxiliary_schedule=((96, 2),), test_images=32
    )
    world = dataclasses.replace(TEXTURES, recipe=recipe)
    assert image_ranges(world) == {"classifier": (0, 96), "auxiliary": (96, 64)}
    metrics = train_world(world, tmp_path / "run", progress=False)
    assert sorted(metrics) == ["auxiliary", "classifier"]
    backbone = create_backbone(f"local-dir:{tmp_path / 'run' / 'classifier'}")
    assert backbone.class_names == list(TEXTURE_CLASSES)
    assert backbone.preprocessing.crop == 96 and backbone.preprocessing.mean == TEXTURES_MEAN
    features = timm.create_model(
        f"local-dir:{tmp_path / 'run' / 'auxiliary'}", features_only=True, out_indices=(1, 2, 3, 4)
    )
    shapes = [tuple(level.shape[-2:]) for level in features(torch.zeros(1, 3, 96, 96))]
    assert shapes == [(24, 24), (12, 12), (6, 6), (3, 3)]
    for part in ("classifier", "auxiliary"):
        assert {path.name for path in (tmp_path / "run" / part).iterdir()} == {
            "config.json",
            "model.safetensors",
            "metrics.json",
            "README.md",
        }
