"""Adding a saliency method is its function and one registration: the app, the command line, the
evaluation and the exports find it without any other change."""

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import app
from ptame import cli
from ptame.methods import METHODS, default_method_keys, get_method, method_keys, register_method, unregister_method
from ptame.serving.manifest import ModelEntry
from ptame.serving.models import ModelRegistry
from ptame.serving.session import ExplainSession
from tests.conftest import ROOT, TRAINED_DEMO
from train import evaluate

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
    updates = list(app.Handlers(session, tmp_path).explain(str(EXAMPLE), "shapes", ["ptame", centre_method]))
    overlays = dict(zip(METHODS, updates[-1][2 : 2 + len(METHODS)]))
    assert overlays[centre_method].label.startswith(f"{NAME} · ")
    assert overlays[centre_method].visible and overlays["gradcam"].visible is False
    maps = np.load(updates[-1][-2])
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
    settings = evaluate.EvaluationSettings(methods=("ptame", centre_method), metrics=("ad_ic", "pointing"))
    rows, _ = evaluate.evaluate(model, evaluate.shapes_batches("test", 4, 128, 4), settings, torch.device("cpu"))
    assert [row["method"] for row in rows] == ["ptame", centre_method]
    assert rows[0]["pointing_game"] != rows[1]["pointing_game"] or rows[0]["ad_100"] != rows[1]["ad_100"]
    assert f"| {NAME} |" in evaluate.markdown_text(rows, ["setup"])
