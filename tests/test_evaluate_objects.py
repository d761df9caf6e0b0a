"""Evaluations on images of several objects: the ground truth of a prediction is its object's mask,
and class switching asks each object's class for its map; references worked out by hand."""

import math

import pytest
import torch

from ptame.methods import register_method, unregister_method
from ptame.metrics import predicted_object_masks
from train import evaluation

SIZE = 32
PEAK_COLUMNS = {0: 4, 1: 20}  # the test method's map of class c has its maximum at column PEAK_COLUMNS[c]


class BrightClassifier:
    """Two classes; every image is predicted class 1 (the logits favour it by the mean pixel)."""

    class_names = ("dark", "bright")

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = pixels.mean(dim=(1, 2, 3))
        return torch.stack([-mean, mean + 1], dim=1)


def column_peak(backbone: object, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """A map per image whose maximum is at row 16 and its class's column (a ramp elsewhere)."""
    maps = torch.linspace(0, 0.5, SIZE).expand(pixels.shape[0], SIZE, SIZE).clone()
    for row, cls in enumerate(classes.tolist()):
        maps[row, 16, PEAK_COLUMNS[cls]] = 1.0
    return maps


@pytest.fixture
def peak_method() -> str:
    register_method("test-column-peak", "Column peak", passes=lambda channels, options: 0)(column_peak)
    yield "test-column-peak"
    unregister_method("test-column-peak")


def columns(start: int, stop: int) -> torch.Tensor:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[8:24, start:stop] = True
    return mask


def test_the_ground_truth_is_the_predicted_objects_mask_else_every_object() -> None:
    left, right, middle = columns(0, 8), columns(16, 24), columns(10, 14)
    object_classes = torch.tensor([[5, 7, -1], [5, 7, -1], [9, -1, -1]])
    object_masks = torch.stack(
        [torch.stack([left, right, torch.zeros_like(left)]), torch.stack([left, right, torch.zeros_like(left)]),
         torch.stack([middle, torch.zeros_like(left), torch.zeros_like(left)])]
    )  # fmt: skip
    truth = predicted_object_masks(torch.tensor([7, 3, 4]), object_classes, object_masks)
    assert torch.equal(truth[0], right)  # the object of class 7
    assert torch.equal(truth[1], left | right)  # class 3 is no object's: all of them
    assert torch.equal(truth[2], middle)  # one object, another class: that object


def test_class_switching_and_pointing_on_objects_by_hand(peak_method: str) -> None:
    """Four images, all predicted class 1 (its map peaks at column 20, class 0's at column 4):
    image 0: class 0 at columns 0-7, class 1 at 16-23: both classes' maps hit, pointing hits;
    image 1: the two swapped: both miss, pointing misses; image 2: one object (class 1 at 16-23):
    no class switching, pointing hits; image 3: class 1 at 16-23, class 0 at 24-31: one of two.
    Pointing 75%, class switching (100 + 0 + 50) / 3."""
    empty = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    object_classes = torch.tensor([[0, 1], [0, 1], [1, -1], [1, 0]])
    object_masks = torch.stack(
        [torch.stack([columns(0, 8), columns(16, 24)]), torch.stack([columns(16, 24), columns(0, 8)]),
         torch.stack([columns(16, 24), empty]), torch.stack([columns(16, 24), columns(24, 32)])]
    )  # fmt: skip
    pixels = torch.full((4, 3, SIZE, SIZE), 0.5)
    settings = evaluation.EvaluationSettings(methods=(peak_method,), metrics=("pointing", "switching"))
    tally = evaluation.evaluate_tally(
        BrightClassifier(), None, [(pixels, object_classes, object_masks)], settings, torch.device("cpu")
    )
    per_image = tally.totals[peak_method].per_image()
    assert per_image["pointing_game"].tolist() == [100.0, 0.0, 100.0, 100.0]
    switching = per_image["class_switching"].tolist()
    assert switching[0] == 100.0 and switching[1] == 0.0 and math.isnan(switching[2]) and switching[3] == 50.0
    row = tally.rows()[0]
    assert row["class_switching"] == pytest.approx(50.0) and row["pointing_game"] == 75.0
    assert tally.accuracy() == 100.0  # class 1 is one of the objects of every image


def test_the_report_says_how_class_switching_was_measured_only_where_images_hold_several_objects() -> None:
    from train.evaluation_report import markdown_text, setup_description

    settings = evaluation.EvaluationSettings(methods=("gradcam",), metrics=("pointing", "switching"))
    several = setup_description(settings, None, with_masks=True, several_objects=True)
    assert any(line.startswith("Class switching: on the images of two or more objects") for line in several)
    assert not any("Class switching" in line for line in setup_description(settings, None, with_masks=True))
    table = markdown_text([{"method": "gradcam", "pointing_game": 75.0, "class_switching": 50.0}], [])
    assert "| Pointing ↑ | Class switching ↑ |" in table and "| 75.00 | 50.00 |" in table
