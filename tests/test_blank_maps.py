"""No silent blank maps: a CAM with no positive evidence at its layer is said to be blank, with why
and what to try, in the app's notes and caption, the command line's output and the .npz."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import app
from ptame import Preprocessing
from ptame.cli import main
from ptame.serving.manifest import ModelEntry
from ptame.serving.models import ModelRegistry
from ptame.serving.session import ExplainSession
from tests.conftest import shapes_file

SPEC = "tests.test_blank_maps:dead_feature_classifier"


def dead_feature_classifier() -> tuple[nn.Module, Preprocessing]:
    """A classifier whose last spatial layer outputs only zeros: every CAM of it is constant."""
    torch.manual_seed(0)
    dead = nn.Conv2d(4, 4, 1)
    nn.init.zeros_(dead.weight)
    nn.init.zeros_(dead.bias)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), dead, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    return model, Preprocessing(resize=32, crop=32)


def test_a_blank_grad_cam_is_said_in_the_apps_notes_and_caption(tmp_path: Path) -> None:
    entry = ModelEntry.from_classifier(SPEC)
    registry = ModelRegistry([entry])
    key = registry.load(entry.key).entry.key
    handlers = app.Handlers(ExplainSession(registry), tmp_path / "downloads")
    outputs = list(handlers.explain(str(shapes_file(tmp_path, 0)), key, ["gradcam"], progress=None))[-1]
    page = handlers.page
    assert outputs[page.overlays["gradcam"]].label.endswith("· blank map")
    notes = outputs[page.notes].value
    assert "The Grad-CAM map is blank (constant)" in notes and "target layer 3" in notes and "--target-layer" in notes
    with np.load(outputs[page.maps_file]) as saved:
        assert bool(saved["blank_gradcam"]) and np.ptp(saved["gradcam"]) == 0


def test_the_command_line_says_which_maps_are_blank(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = shapes_file(tmp_path, 0)
    assert main(["explain", str(image), "--classifier", SPEC, "--methods", "gradcam", "--out", str(tmp_path / "out")]) == 0
    assert "The Grad-CAM map is blank (constant)" in capsys.readouterr().err
    with np.load(tmp_path / "out" / f"{image.stem}.npz") as saved:
        assert bool(saved["blank_gradcam"])


def test_an_informative_map_is_not_called_blank(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = shapes_file(tmp_path, 0)
    argv = ["explain", str(image), "--model", "checkpoints/shapes", "--methods", "gradcam", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "blank" not in capsys.readouterr().err
    with np.load(tmp_path / "out" / f"{image.stem}.npz") as saved:
        assert not bool(saved["blank_gradcam"]) and np.ptp(saved["gradcam"]) > 0
