"""Adding a saliency method is its function and one registration: the app, the command line, the
evaluation and the exports find it without any other change."""

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import app
from ptame import PTAME, cli
from ptame.datasets.shapes import SHAPES
from ptame.methods import METHODS, default_method_keys, get_method, method_keys, register_method, unregister_method
from ptame.serving.manifest import ModelEntry
from ptame.serving.models import ModelRegistry
from ptame.serving.session import ExplainSession
from tests.conftest import ROOT, TRAINED_DEMO
from train import evaluation, evaluation_report
from train.commands import evaluate

EXAMPLE = ROOT / "checkpoints" / "examples" / "shapes-test-0-circle.png"
KEY, NAME = "centre-test", "Centre prior (test)"


def centre_prior(backbone: object, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """1 at the image's centre, falling linearly to 0 at its corners; the same for every class."""
    height, width = pixels.shape[-2:]
    rows = torch.linspace(-1.0, 1.0, height)[:, None]
    columns = torch.linspace(-1.0, 1.0, width)[None, :]
    distance = (rows**2 + columns**2).sqrt()
    return (1.0 - distance / distance.max()).expand(pixels.shape[0], height, width).clone()


@pytest.fixture
def centre_method() -> Iterator[str]:
    register_method(KEY, NAME, passes=lambda channels, options: 1)(centre_prior)
    yield KEY
    unregister_method(KEY)


@pytest.fixture(scope="module")
def session() -> ExplainSession:
    registry = ModelRegistry([ModelEntry.from_folder(TRAINED_DEMO)])
    registry.load("shapes")
    return ExplainSession(registry)


def expected_map() -> np.ndarray:
    return centre_prior(None, torch.zeros(1, 3, 128, 128), torch.zeros(1))[0].numpy()


def test_a_registered_method_is_listed_in_order_and_unregistered_cleanly(centre_method: str) -> None:
    assert method_keys()[-1] == centre_method and get_method(centre_method).name == NAME
    assert centre_method not in default_method_keys()
    with pytest.raises(ValueError, match="registered already"):
        register_method(KEY, "again", passes=lambda channels, options: 1)(centre_prior)
    unregister_method(centre_method)
    with pytest.raises(ValueError, match="unknown method"):
        get_method(centre_method)
    register_method(KEY, NAME, passes=lambda channels, options: 1)(centre_prior)


def test_the_app_offers_and_draws_a_registered_method(
    centre_method: str, session: ExplainSession, tmp_path: Path
) -> None:
    demo = app.build_demo(session, downloads=tmp_path, cache_examples=False)
    choices = [c for block in demo.config["components"] for c in block.get("props", {}).get("choices", []) or []]
    assert (NAME, centre_method) in [tuple(choice) for choice in choices]
    handlers = app.Handlers(session, tmp_path)
    updates = list(handlers.explain(str(EXAMPLE), "shapes", ["ptame", centre_method]))
    overlays = {key: updates[-1][overlay] for key, overlay in handlers.page.overlays.items()}
    assert list(overlays) == list(METHODS)
    assert overlays[centre_method].label.startswith(f"{NAME} · ")
    assert overlays[centre_method].visible and overlays["gradcam"].visible is False
    maps = np.load(updates[-1][handlers.page.maps_file])
    np.testing.assert_allclose(maps[centre_method], expected_map(), atol=1e-6)
    assert session.expected_seconds(session.read(EXAMPLE), "shapes", centre_method) >= 0


def test_the_command_line_accepts_and_exports_a_registered_method(centre_method: str, tmp_path: Path) -> None:
    status = cli.main(
        [
            "explain",
            str(EXAMPLE),
            "--model",
            str(TRAINED_DEMO),
            "--methods",
            f"ptame,{centre_method}",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    maps = np.load(tmp_path / f"{EXAMPLE.stem}.npz")
    np.testing.assert_allclose(maps[centre_method], expected_map(), atol=1e-6)
    assert {"ptame", centre_method} <= set(maps.files)


def test_the_evaluation_scores_a_registered_method(centre_method: str, session: ExplainSession) -> None:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    args = parser.parse_args(
        ["--checkpoint", str(TRAINED_DEMO), "--data", "shapes", "--out", "x", "--methods", centre_method]
    )
    assert args.methods == [centre_method]
    model = session.registry.get("shapes")
    settings = evaluation.EvaluationSettings(methods=("ptame", centre_method), metrics=("ad_ic", "pointing"))
    batches = evaluation.world_batches(SHAPES, "test", 4, 128, 4)
    rows, _ = evaluation.evaluate(model.backbone, model.explainer, batches, settings, torch.device("cpu"))
    assert [row["method"] for row in rows] == ["ptame", centre_method]
    assert rows[0]["pointing_game"] != rows[1]["pointing_game"] or rows[0]["ad_100"] != rows[1]["ad_100"]
    assert f"| {NAME} |" in evaluation_report.markdown_text(rows, ["setup"])


# The P-TAME method on a batch: each image gets the map of its own class.

BATCH_CLASSES = [7, 2, 4, 0]  # all different: any reordering of the classes gives another image another class


def min_max_by_hand(raw: np.ndarray) -> np.ndarray:
    """(m - min) / (max - min) of one map, in float64."""
    raw = raw.astype(np.float64)
    return (raw - raw.min()) / (raw.max() - raw.min())


def single_image_reference(explainer: PTAME, image: torch.Tensor, label: int) -> np.ndarray:
    """Image (3, H, W)'s map of ``label`` alone: the explainer's raw map of that one class for
    that one image, resized bilinearly to (H, W), min-max normalised by hand."""
    with torch.no_grad():
        raw = explainer(image.unsqueeze(0), torch.tensor([label]))  # (1, 1, h, w)
        resized = F.interpolate(raw, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
    return min_max_by_hand(resized[0, 0].numpy())


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four different 64x64 noise images and their four different classes."""
    pixels = torch.rand(len(BATCH_CLASSES), 3, 64, 64, generator=torch.Generator().manual_seed(3))
    return pixels, torch.tensor(BATCH_CLASSES)


@pytest.mark.parametrize("precomputed", [False, True], ids=["explainer-runs", "all-class-maps"])
def test_p_tame_gives_each_image_of_a_batch_the_map_of_its_own_class(
    explainer: PTAME, batch: tuple[torch.Tensor, torch.Tensor], precomputed: bool
) -> None:
    """Both paths of the method (the explainer run for the requested classes, or the raw maps of
    every class given as ``all_class_maps``) against each image's map computed alone."""
    pixels, classes = batch
    references = [single_image_reference(explainer, image, int(label)) for image, label in zip(pixels, classes)]
    # The references tell classes apart: image 0's map of another image's class is another map.
    assert all(np.abs(references[0] - single_image_reference(explainer, pixels[0], c)).max() > 0.05 for c in (2, 4, 0))
    options = {"explainer": explainer}
    if precomputed:
        with torch.no_grad():
            options["all_class_maps"] = explainer(pixels)  # (B, K, h, w)
        assert options["all_class_maps"].shape[:2] == (len(BATCH_CLASSES), 10)
    maps = get_method("ptame")(None, pixels, classes, **options)
    assert maps.shape == (len(BATCH_CLASSES), 64, 64)
    for index, reference in enumerate(references):
        np.testing.assert_allclose(maps[index].numpy(), reference, atol=1e-5, err_msg=f"image {index}")


def test_p_tame_reads_precomputed_all_class_maps_by_image_and_class() -> None:
    """Hand-made raw maps (2 images x 3 classes, 4x4, at the input's size: no resize): image i's
    map is all_class_maps[i, classes[i]], min-max normalised; the explainer is not needed."""
    raw = torch.tensor(
        [
            [  # image 0
                [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0], [12.0, 13.0, 14.0, 15.0]],
                [[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
                [[-1.0, -1.0, -1.0, -1.0], [-1.0, 3.0, 3.0, -1.0], [-1.0, 3.0, 1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]],
            ],
            [  # image 1
                [[2.0, 2.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]],
                [[9.0, 8.0, 7.0, 6.0], [5.0, 4.0, 3.0, 2.0], [1.0, 0.0, 1.0, 2.0], [3.0, 4.0, 5.0, 6.0]],
                [[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
            ],
        ]
    )
    classes = torch.tensor([2, 0])
    pixels = torch.zeros(2, 3, 4, 4)
    maps = get_method("ptame")(None, pixels, classes, explainer=None, all_class_maps=raw)
    # Image 0, class 2: min -1, max 3, span 4.
    image_0 = [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]
    # Image 1, class 0: min 0, max 2.
    image_1 = [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]]
    np.testing.assert_allclose(maps.numpy(), np.array([image_0, image_1]), atol=1e-7)
