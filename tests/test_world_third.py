"""A third generated world is one new entry: the few lines of data below, trained, evaluated and
written as images through the commands, without touching any other file."""

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ptame.datasets import World, WorldRecipe, register_world
from ptame.datasets.world import unregister_world
from train.__main__ import main


def draw_blocks(rng: np.random.Generator, name: str, size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A light square or bar at a random place on a dark grey background, with a little noise."""
    image = np.full((size, size, 3), rng.uniform(0.1, 0.4), np.float32)
    height, width = (size // 4, size // 4) if name == "square" else (size // 8, size // 2)
    top, left = rng.integers(1, size - height), rng.integers(1, size - width)
    coverage = np.zeros((size, size), np.float32)
    coverage[top : top + height, left : left + width] = 1.0
    image[coverage > 0] = rng.uniform(0.7, 1.0, 3)
    return image + 0.02 * rng.standard_normal(image.shape, dtype=np.float32), coverage


SMALL = {"channels": (8, 16, 32, 64), "stem_width": 8}
BLOCKS = World(
    name="blocks",
    classes=("square", "bar"),
    image_size=32,
    mean=(0.3, 0.3, 0.3),
    std=(0.25, 0.25, 0.25),
    draw=draw_blocks,
    recipe=WorldRecipe(
        classifier="resnet10t",
        classifier_args=SMALL,
        classifier_schedule=((32, 3),),
        auxiliary="resnet10t",
        auxiliary_args=SMALL,
        auxiliary_schedule=((32, 2),),
        explainer_steps=2,
        batch_size=4,
        test_images=8,
        workers=0,
    ),
    module=__name__,
)


@pytest.fixture
def blocks() -> Iterator[World]:
    yield register_world(BLOCKS)
    unregister_world(BLOCKS.name)


def test_a_third_world_is_trained_evaluated_and_drawn_through_the_commands(blocks: World, tmp_path: Path) -> None:
    run = tmp_path / "blocks"
    main(["world", "--world", "blocks", "--out", str(run)])
    metrics = {part: json.loads((run / part / "metrics.json").read_text()) for part in ("classifier", "explainer")}
    assert metrics["classifier"]["train_images"] == 12 and metrics["explainer"]["train_images"] == 8
    assert 0.0 <= metrics["explainer"]["pointing_game"] <= 1.0
    assert "python -m train world --world blocks" in (run / "classifier" / "README.md").read_text()

    report = tmp_path / "report"
    options = ["--checkpoint", str(run), "--data", "blocks", "--images", "8", "--batch-size", "4", "--out", str(report)]
    main(["evaluate", *options, "--methods", "ptame", "gradcam", "--metrics", "ad_ic", "pointing"])
    assert "blocks world, split test, first 8 images at 32 px" in (report / "evaluation.md").read_text()
    rows = (report / "evaluation.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["ptame", "gradcam"] and "pointing_game" in rows[0]

    main(["images", "--world", "blocks", "--split", "train", "--count", "2", "--out", str(tmp_path / "png")])
    picture = np.asarray(Image.open(tmp_path / "png" / "blocks-train-000001.png"))
    assert np.array_equal(picture, blocks.sample(1, "train").picture())
