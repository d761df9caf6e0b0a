"""The committed shapes demo still gives the outputs pinned in tests/fixtures/shapes-pinned.npz
(written by `python -m tests.pinned`), and the figures of its metrics.json."""

import json

import numpy as np
import pytest

from ptame.datasets.shapes import SHAPES
from tests.conftest import TRAINED_DEMO
from tests.pinned import PINNED, pinned_outputs
from train.worlds import explainer_figures

pytestmark = pytest.mark.skipif(
    not (TRAINED_DEMO / "explainer" / "model.safetensors").is_file(), reason="the trained shapes demo is absent"
)


def test_maps_and_probabilities_equal_the_pinned_ones() -> None:
    with np.load(PINNED) as pinned:
        expected = {name: pinned[name] for name in pinned.files}
    got = pinned_outputs()
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        scale = max(float(np.abs(expected[name]).max()), 1.0)
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-4 * scale, err_msg=name)


@pytest.mark.slow
def test_the_explainer_metrics_json_is_reproduced() -> None:
    """pointing game, energy and AD/IC of metrics.json, recomputed on the same 500 test images."""
    from ptame.serving.loader import load_model
    from ptame.serving.manifest import ModelEntry

    recorded = json.loads((TRAINED_DEMO / "explainer" / "metrics.json").read_text())
    model = load_model(ModelEntry.from_folder(TRAINED_DEMO))
    measured = explainer_figures(SHAPES, model.backbone, model.explainer, progress=False)
    for name, value in measured.items():
        if isinstance(value, float) and name in recorded:
            assert value == pytest.approx(recorded[name], abs=1e-3), name
