"""ptame with Quantus: the pixel-space module, explain_func for every method, Quantus's metrics on
ptame's maps of the shapes demo, and Quantus's figures against ptame's where both compute the same
quantity (``ptame.interop.agreement``). The Quantus tests are skipped where Quantus is not installed
(``pip install -r requirements-interop.txt --no-deps``, as .ci/run does)."""

import copy

import numpy as np
import pytest
import torch

from ptame.interop.agreement import (
    DELETION_TOLERANCE,
    POINTING_TOLERANCE,
    ROAD_TOLERANCE,
    compare,
    load_shapes_demo,
    shapes_batch,
    split_ties,
    table,
)
from ptame.interop.maps import as_maps, score_maps
from ptame.interop.quantus import (
    PixelClassifier,
    explain_func,
    numpy2_aliases,
    pixel_flipping_curve,
    pixel_flipping_features,
    road_imputation,
    road_percentages,
)
from ptame.loading.backbones import Backbone, Preprocessing
from ptame.methods import METHODS
from ptame.metrics import pointing_game
from ptame.serving.loader import load_model
from ptame.serving.manifest import ModelEntry
from tests.conftest import TRAINED_DEMO, random_shapes_demo, randomise_head

FAST_OPTIONS = {"rise": {"num_masks": 16, "batch_size": 16}}  # every other method with its defaults


@pytest.fixture(scope="module")
def trained() -> tuple:
    """The trained shapes demo (classifier, explainer) and its first 6 test images (one per class)."""
    backbone, explainer = load_shapes_demo(TRAINED_DEMO)
    pixels, labels, masks = shapes_batch(6)
    return backbone, explainer, pixels, labels, masks


@pytest.fixture(scope="module")
def random_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    model = load_model(ModelEntry.from_folder(random_shapes_demo(tmp_path_factory.mktemp("models") / "shapes")))
    return model.backbone, model.explainer


# Anyone's maps as ptame maps.


def test_as_maps_takes_every_layout_and_gives_maps_in_the_unit_range() -> None:
    generator = torch.Generator().manual_seed(0)
    signed = torch.randn(2, 3, 8, 8, generator=generator)
    summed = as_maps(signed)
    assert summed.shape == (2, 8, 8) and summed.dtype == torch.float32
    np.testing.assert_allclose(summed, as_maps(signed.sum(dim=1).numpy()), atol=1e-6)
    np.testing.assert_allclose(summed, as_maps(signed.sum(dim=1, keepdim=True)), atol=1e-6)
    assert float(summed.min()) == 0 and float(summed.max()) == 1
    positive = signed.sum(dim=1).clamp_min(0)
    expected = positive / positive.flatten(1).amax(dim=1)[:, None, None]  # min 0: ReLU leaves zeros
    np.testing.assert_allclose(summed, expected, atol=1e-6)
    magnitudes = as_maps(signed, sign="absolute")
    assert torch.equal(magnitudes.flatten(1).argmax(1), signed.sum(dim=1).abs().flatten(1).argmax(1))
    assert as_maps(signed[:, :1], size=(16, 12)).shape == (2, 16, 12)
    assert torch.equal(as_maps(-torch.ones(1, 4, 4)), torch.zeros(1, 4, 4))  # no evidence for the class


@pytest.mark.parametrize(
    ("attributions", "sign", "message"),
    [
        (torch.zeros(4, 4), "positive", "must be"),
        (torch.zeros(1, 1, 1, 4, 4), "positive", "must be"),
        (torch.full((1, 4, 4), float("nan")), "positive", "finite"),
        (torch.zeros(1, 4, 4), "negative", "sign"),
    ],
)
def test_as_maps_refuses_what_is_not_a_map(attributions: torch.Tensor, sign: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        as_maps(attributions, sign=sign)


def test_score_maps_gives_the_evaluations_figures(trained: tuple) -> None:
    backbone, explainer, pixels, labels, masks = trained
    pixels, masks = pixels[:2], masks[:2]
    classes = backbone.logits(pixels).argmax(dim=1)
    maps = explainer.explain(pixels, classes).detach()
    figures = score_maps(backbone, pixels, maps, classes, masks, road_fractions=(0.1,), deletion_steps=4)
    assert set(figures) == {
        "ad_100", "ic_100", "ad_50", "ic_50", "ad_15", "ic_15", "deletion_auc", "insertion_auc",
        "road_morf_auc", "road_lerf_auc", "pointing_game", "energy_pointing_game",
    }  # fmt: skip
    assert all(np.isfinite(value) for value in figures.values())
    assert figures["pointing_game"] == 100.0 and figures["ad_100"] < 10
    assert "pointing_game" not in score_maps(backbone, pixels, maps, classes, road_fractions=(0.1,), deletion_steps=4)


# The pixel-space module and explain_func (no Quantus needed).


def test_pixel_classifier_normalises_inside_and_keeps_only_the_classifier(random_demo: tuple) -> None:
    backbone, explainer = random_demo
    model = PixelClassifier(backbone, explainer).eval()
    pixels = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), backbone.logits(pixels))
    assert [name for name, _ in model.named_children()] == ["classifier"]
    assert model.explainer is explainer
    assert model.backbone().target_layer is backbone.target_layer
    copied = copy.deepcopy(model)
    assert copied.backbone().target_layer is not backbone.target_layer
    assert copied.backbone().target_layer is copied.classifier.get_submodule(model.target_layer_name)


def tiny_cnn() -> Backbone:
    """A random 2-convolution CNN on 32x32 images (its CAM layer has 12 channels): fast baselines."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 12, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 6),
    )
    model.requires_grad_(False).eval()
    return Backbone("tiny-cnn", model, Preprocessing(32, 32), model[3], None, [f"class {i}" for i in range(6)])


@pytest.mark.parametrize("method", list(METHODS))
def test_explain_func_gives_every_methods_maps_in_quantus_layout(random_demo: tuple, method: str) -> None:
    explainer = random_demo[1] if METHODS[method].uses_explainer else None
    backbone = random_demo[0] if METHODS[method].uses_explainer else tiny_cnn()
    size = backbone.preprocessing.crop
    model = PixelClassifier(backbone, explainer).eval()
    images = np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32)
    maps = explain_func(model, images, np.array([0, 3]), method=method, device="cpu", **FAST_OPTIONS.get(method, {}))
    assert maps.shape == (2, 1, size, size) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    expected = METHODS[method](
        backbone,
        torch.from_numpy(images),
        torch.tensor([0, 3]),
        **({"explainer": explainer} if explainer is not None else {}),
        **FAST_OPTIONS.get(method, {}),
    )
    np.testing.assert_allclose(maps[:, 0], expected.numpy(), atol=1e-6)


def test_explain_func_says_what_is_missing(random_demo: tuple) -> None:
    backbone, explainer = random_demo
    images, targets = np.zeros((1, 3, 128, 128), np.float32), np.array([0])
    with pytest.raises(ValueError, match="needs the classifier's P-TAME explainer"):
        explain_func(PixelClassifier(backbone), images, targets, method="ptame")
    assert explain_func(PixelClassifier(backbone), images, targets, method="ptame", explainer=explainer).shape == (
        1, 1, 128, 128,
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown method"):
        explain_func(PixelClassifier(backbone), images, targets, method="nothing")
    with pytest.raises(ValueError, match="PixelClassifier or a ptame.Backbone"):
        explain_func(torch.nn.Identity(), images, targets, method="gradcam")


def test_explain_func_uses_the_explainer_it_is_given_over_the_models(random_demo: tuple) -> None:
    """An explainer passed to explain_func wins over the one the PixelClassifier carries (Quantus passes the
    metric's model back; a caller comparing explainers passes each in turn)."""
    backbone, explainer = random_demo
    torch.manual_seed(1)
    other = randomise_head(copy.deepcopy(explainer))
    pixels = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    classes = torch.tensor([1, 4])
    with torch.inference_mode():
        own, wanted = explainer.explain(pixels, classes), other.explain(pixels, classes)
    assert (own - wanted).abs().max() > 0.1  # two explainers whose maps differ
    model = PixelClassifier(backbone, explainer).eval()
    given = explain_func(model, pixels.numpy(), classes.numpy(), method="ptame", explainer=other)
    np.testing.assert_allclose(given[:, 0], wanted.numpy(), atol=1e-6)
    carried = explain_func(model, pixels.numpy(), classes.numpy(), method="ptame")
    np.testing.assert_allclose(carried[:, 0], own.numpy(), atol=1e-6)


def test_numpy2_aliases_last_only_while_the_block_runs() -> None:
    had = hasattr(np, "trapz")
    with numpy2_aliases():
        assert np.trapz([1.0, 1.0]) == 1.0 and np.isnan(np.NaN)
    assert hasattr(np, "trapz") == had


def test_quantus_settings_for_whole_pixels() -> None:
    assert road_percentages([0.1, 0.5]) == pytest.approx([30.0, 150.0])
    assert pixel_flipping_features(128, 128, 16) == 1024
    with pytest.raises(ValueError, match="divide"):
        pixel_flipping_features(128, 128, 3)
    curve = np.arange(12.0)[None]  # 3 channels x 4 steps
    np.testing.assert_array_equal(pixel_flipping_curve(curve), [[2.0, 5.0, 8.0, 11.0]])
    maps = np.array([[4.0, 3.0, 3.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(split_ties(maps, 4), [[False, True, False, False], [False] * 4])


# Quantus itself.


def test_quantus_metrics_run_on_ptames_maps_of_the_shapes_demo(trained: tuple) -> None:
    quantus = pytest.importorskip("quantus")
    backbone, explainer, pixels, labels, masks = trained
    model = PixelClassifier(backbone, explainer).eval()
    x, y = pixels[:2].numpy(), labels[:2].numpy()
    s = masks[:2, None].numpy().astype(np.float32)
    common = {"disable_warnings": True, "display_progressbar": False}
    for method in ("ptame", "gradcam"):
        a = explain_func(model, x, y, method=method)
        np.random.seed(0)
        with numpy2_aliases():
            figures = {
                "pointing": quantus.PointingGame(**common)(model=model, x_batch=x, y_batch=y, a_batch=a, s_batch=s),
                "correlation": quantus.FaithfulnessCorrelation(
                    nr_runs=5, subset_size=1024, return_aggregate=False, **common
                )(
                    model=model, x_batch=x, y_batch=y, explain_func=explain_func,
                    explain_func_kwargs={"method": method}, device="cpu",
                ),
                "flipping": quantus.PixelFlipping(
                    features_in_step=pixel_flipping_features(128, 128, 4), perturb_baseline=0.0,
                    return_auc_per_sample=True, **common,
                )(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu"),
            }  # fmt: skip
            road = quantus.ROAD(percentages=road_percentages([0.1]), perturb_func=road_imputation, **common)
            road(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
        figures["road"] = list(road.evaluation_scores.values())
        for name, values in figures.items():
            assert len(values) == (1 if name == "road" else 2), (method, name)
            assert np.isfinite(np.asarray(values, dtype=np.float64)).all(), (method, name, values)
        hits = pointing_game(torch.from_numpy(a[:, 0]), masks[:2]).tolist()
        assert np.asarray(figures["pointing"], dtype=bool).tolist() == hits, method


def test_quantus_road_fails_on_colour_images_without_the_fix(trained: tuple) -> None:
    """Why ``road_imputation`` exists: Quantus 0.6.0's own ROAD hands (C, H, W) indices to an
    imputation of (H, W) pixels."""
    quantus = pytest.importorskip("quantus")
    backbone, explainer, pixels, labels, _ = trained
    model = PixelClassifier(backbone, explainer).eval()
    x, y = pixels[:1].numpy(), labels[:1].numpy()
    a = explain_func(model, x, y, method="ptame")
    with pytest.raises(IndexError):
        quantus.ROAD(percentages=[50], disable_warnings=True)(model=model, x_batch=x, y_batch=y, a_batch=a)


@pytest.mark.slow
def test_quantus_and_ptame_agree_on_the_shared_quantities(trained: tuple) -> None:
    """Pointing game, ROAD MoRF and the deletion curve, 12 shapes test images, P-TAME and Grad-CAM
    (tolerances in ``ptame.interop.agreement``)."""
    pytest.importorskip("quantus")
    backbone, explainer, _, _, _ = trained
    pixels, _, masks = shapes_batch(12)
    results = {method: compare(backbone, explainer, pixels, masks, method) for method in ("ptame", "gradcam")}
    for method, result in results.items():
        untied = ~result.tied_peaks
        apart = (result.pointing_quantus[untied] != result.pointing_ptame[untied]).sum()
        assert apart <= POINTING_TOLERANCE, method
        np.testing.assert_allclose(result.road_quantus, result.road_ptame, atol=ROAD_TOLERANCE, err_msg=method)
        clean = ~result.split_ties
        assert clean.sum() >= clean.size // 4, method
        np.testing.assert_allclose(
            result.deletion_quantus[clean], result.deletion_ptame[clean], atol=DELETION_TOLERANCE, err_msg=method
        )
        assert np.isfinite(result.faithfulness_correlation)
    assert "| ptame | pointing game (%) |" in table(results, 12)
