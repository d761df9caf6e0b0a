"""The objects world: masks, labels and splits, on stand-in stamps and backgrounds the test draws
itself (one flat colour each, so that every pixel says which file it came from); one slow test
reads the real Debian packages."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageDraw

from ptame.datasets import objects
from ptame.datasets.objects import BACKGROUNDS, HELD_OUT, OBJECTS, STAMPS, TRAIN
from ptame.errors import DataUnavailable
from train.evaluation import WorldObjects

SIZE = 96
LEVELS = (30, 80, 130, 180, 230)  # stamp colours: a 5 x 5 x 5 grid
STAMP_COLOURS = dict(zip(sorted(STAMPS), itertools.product(LEVELS, repeat=3), strict=False))
BACKGROUND_COLOURS = dict(zip(sorted(BACKGROUNDS), itertools.product((5, 55, 105, 155, 205), repeat=3), strict=False))


@pytest.fixture
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stamp of the table as a flat-coloured ellipse (alpha 0 outside), every background a flat colour."""
    assert len(STAMP_COLOURS) == len(STAMPS)
    for name, colour in STAMP_COLOURS.items():
        path = tmp_path / "stamps" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGBA", (90, 60), (0, 0, 0, 0))
        ImageDraw.Draw(image).ellipse((2, 2, 87, 57), fill=(*colour, 255))
        image.save(path)
    for name, colour in BACKGROUND_COLOURS.items():
        path = tmp_path / "wallpapers" / name / "contents" / "images" / "640x480.png"
        path.parent.mkdir(parents=True)
        Image.new("RGB", (640, 480), colour).save(path)
    monkeypatch.setenv(objects.STAMPS_ENV, str(tmp_path / "stamps"))
    monkeypatch.setenv(objects.BACKGROUNDS_ENV, str(tmp_path / "wallpapers"))
    objects.stamp.cache_clear()
    objects.background.cache_clear()
    yield
    objects.stamp.cache_clear()
    objects.background.cache_clear()


def nearest(picture: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each pixel's nearest palette colour: (names, (S, S) index into names, (S, S) distance)."""
    names = list(palette)
    colours = np.array([palette[name] for name in names], np.float32)
    distances = np.linalg.norm(picture[:, :, None, :].astype(np.float32) - colours, axis=-1)
    return names, distances.argmin(axis=-1), distances.min(axis=-1)


def dominant(indices: np.ndarray, names: list[str]) -> tuple[str, float]:
    """The most frequent of ``indices`` (into ``names``) and its share of them."""
    counts = np.bincount(indices, minlength=len(names))
    return names[int(counts.argmax())], counts.max() / max(counts.sum(), 1)


def iou(first: np.ndarray, second: np.ndarray) -> float:
    return (first & second).sum() / max((first | second).sum(), 1)


@pytest.mark.parametrize("split", ["train", "test"])
def test_each_objects_mask_is_where_its_own_stamp_shows_and_its_label_is_its_stamps_class(stand_ins, split):
    palette = {**STAMP_COLOURS, **BACKGROUND_COLOURS}
    counts = set()
    for index in range(24):
        sample = OBJECTS.sample(index, split, SIZE)
        names, which, distance = nearest(sample.picture(), palette)
        assert sample.objects[0][0] == sample.label
        assert torch.equal(sample.objects[0][1], sample.mask)
        classes = [label for label, _ in sample.objects]
        assert len(set(classes)) == len(classes), "two objects of one class"
        counts.add(len(classes))
        for label, mask in sample.objects:
            shown, share = dominant(which[mask.numpy() & (distance < 8)], names)
            assert share > 0.95, f"image {index}: {shown} shows on only {share:.0%} of its object's mask"
            stamp = shown
            assert STAMPS[stamp][0] == OBJECTS.class_indices[label], f"{stamp} labelled {OBJECTS.classes[label]}"
            assert STAMPS[stamp][1] == (TRAIN if split == "train" else HELD_OUT), f"{stamp} drawn in {split}"
            drawn = (which == names.index(stamp)) & (distance < 8)
            assert iou(drawn, mask.numpy()) > 0.8, f"image {index}: {stamp}'s mask is not where it shows"
        background = np.ones((SIZE, SIZE), bool)
        for _, mask in sample.objects:
            background &= ~mask.numpy()
        shown, share = dominant(which[background & (distance < 8)], names)
        assert share > 0.95 and BACKGROUNDS[shown] == (TRAIN if split == "train" else HELD_OUT)
    assert counts == {1, 2, 3}


def test_samples_are_a_function_of_split_and_index(stand_ins):
    first, again, other = (
        OBJECTS.sample(5, "test", SIZE),
        OBJECTS.sample(5, "test", SIZE),
        OBJECTS.sample(5, "train", SIZE),
    )
    assert torch.equal(first.pixels, again.pixels)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first.objects, again.objects, strict=True))
    assert not torch.equal(first.pixels, other.pixels)


def test_the_held_out_splits_hold_only_classes_that_were_trained_on_and_no_stamp_or_background_of_training():
    train_classes = {index for index, split in STAMPS.values() if split == TRAIN}
    held_out_classes = {index for index, split in STAMPS.values() if split == HELD_OUT}
    assert held_out_classes and held_out_classes <= train_classes
    for split in ("validation", "test"):
        labels = OBJECTS.split_labels[split]
        assert {OBJECTS.class_indices[label] for label in labels} == held_out_classes
    assert {OBJECTS.class_indices[label] for label in OBJECTS.split_labels["train"]} == train_classes
    assert set(objects.backgrounds_of("train")).isdisjoint(objects.backgrounds_of("test"))
    assert objects.backgrounds_of("test") and objects.backgrounds_of("train")
    stems = [Path(name).stem.removesuffix("_mirror") for name in STAMPS]
    assert len(stems) == len(set(stems)), "a mirrored stamp and its original are the same photograph"


def test_evaluation_items_carry_every_objects_imagenet_class_and_mask(stand_ins):
    images = WorldObjects(OBJECTS.images("test", 6, SIZE))
    for index in range(6):
        pixels, classes, masks = images[index]
        sample = OBJECTS.sample(index, "test", SIZE)
        assert torch.equal(pixels, sample.pixels)
        assert classes.shape == (3,) and masks.shape == (3, SIZE, SIZE)
        count = len(sample.objects)
        expected = [OBJECTS.class_indices[label] for label, _ in sample.objects]  # ImageNet indices
        assert classes[:count].tolist() == expected and (classes[count:] == -1).all()
        assert not masks[count:].any()


def test_a_missing_stamps_folder_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(objects.STAMPS_ENV, str(tmp_path / "nowhere"))
    objects.stamp.cache_clear()
    with pytest.raises(DataUnavailable, match="PTAME_OBJECTS_STAMPS names .*nowhere, which is not a folder"):
        OBJECTS.sample(0, "train", SIZE)
    objects.stamp.cache_clear()


@pytest.mark.slow
def test_the_real_stamps_are_recognised_by_efficientnet_lite0_as_the_table_says(monkeypatch):
    """Debian's packages, fetched as the commands fetch them: every stamp of the table, alone on grey,
    is classified as its class with a probability of at least 0.3, the table's criterion."""
    monkeypatch.delenv(objects.STAMPS_ENV, raising=False)
    monkeypatch.delenv(objects.BACKGROUNDS_ENV, raising=False)
    objects.stamp.cache_clear()
    objects.background.cache_clear()
    try:
        objects.stamps_folder()
    except DataUnavailable as error:
        pytest.skip(f"Debian's packages cannot be fetched here: {error}")
    from ptame.efficientnet_lite0 import backbone

    classifier = backbone()
    names = sorted(STAMPS)
    pictures = []
    for name in names:  # as the table was made: the stamp file, its longer side resized to 190 px (bicubic)
        with Image.open(objects.stamps_folder() / name) as stamp:
            image = stamp.convert("RGBA")
        scale = 190 / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
        canvas = Image.new("RGBA", (224, 224), (128, 128, 128, 255))
        canvas.alpha_composite(image, ((224 - image.width) // 2, (224 - image.height) // 2))
        pictures.append(torch.from_numpy(np.asarray(canvas.convert("RGB"), np.float32) / 255).permute(2, 0, 1))
    with torch.no_grad():
        probabilities = torch.cat(
            [classifier.logits(torch.stack(pictures[i : i + 32])).softmax(1) for i in range(0, len(pictures), 32)]
        )
    chosen = torch.tensor([STAMPS[name][0] for name in names])
    confidence = probabilities[torch.arange(len(names)), chosen]
    wrong = [
        name
        for name, value, top in zip(names, confidence, probabilities.argmax(1))
        if value < 0.3 or top != STAMPS[name][0]
    ]
    assert len(wrong) <= 3, f"stamps the network does not recognise as the table says: {wrong}"
    sample = OBJECTS.sample(0, "test")
    assert sample.pixels.shape == (3, 224, 224) and len(sample.objects) >= 1
    for name in BACKGROUNDS:
        assert objects.background(name).shape[2] == 3


def test_train_explainer_takes_any_imagenet_classifier_on_the_objects_images_and_records_its_classes(
    stand_ins, tmp_path
):
    """The command a user runs for their own ImageNet network, here a random 1000-class timm network on
    objects images: the explainer records the predictions over its 8 training images (12 less 4 held out)."""
    from safetensors.torch import load_file

    from tests.conftest import run_command, save_timm_checkpoint
    from train.commands import explainer as command
    from train.commands.images import write_images

    torch.manual_seed(5)
    network = timm.create_model("test_resnet", num_classes=1000)
    network.pretrained_cfg = {**network.pretrained_cfg, "input_size": (3, 64, 64), "crop_pct": 1.0}
    classifier = save_timm_checkpoint(network, tmp_path / "classifier")
    auxiliary = save_timm_checkpoint(timm.create_model("test_resnet"), tmp_path / "auxiliary")
    images = write_images(tmp_path / "images", "objects", "train", 12, progress=False)
    run_command(command, [
        "--classifier", f"local-dir:{classifier}", "--auxiliary", f"local-dir:{auxiliary}",
        "--data", str(tmp_path / "images"), "--out", str(tmp_path / "run"),
        "--batch-size", "4", "--steps", "3", "--held-out", "4", "--workers", "0", "--no-progress",
    ])  # fmt: skip
    counts = json.loads((tmp_path / "run" / "explainer" / "config.json").read_text())["trained_images"]
    # 3 steps of 4 over 8 training images: every step's targets are counted, the repeated ones too
    assert len(counts) == 1000 and sum(counts) == 12 and len(images) == 12
    fuser = load_file(tmp_path / "run" / "explainer" / "model.safetensors")["fuser.weight"].flatten(1)
    trained = torch.tensor(counts) > 0
    assert torch.allclose(fuser[~trained], fuser[trained].mean(dim=0).expand_as(fuser[~trained]), atol=1e-6)
    assert (fuser[trained] != 0).any(dim=1).all()  # a counted class's row left the zero start: it was trained
