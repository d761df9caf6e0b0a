"""captum's methods through ptame's registry: the same Grad-CAM as ptame's, Occlusion as a streamed
method, both offered by the app, the command line and the metrics without a change to the registry.
Skipped where captum is not installed (``pip install -r requirements-interop.txt --no-deps``)."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("captum")

from captum.attr import LayerGradCam  # noqa: E402

import app  # noqa: E402
from ptame.bench.app import free_port  # noqa: E402
from ptame.interop import captum as captum_methods  # noqa: E402
from ptame.interop.agreement import load_shapes_demo, shapes_batch  # noqa: E402
from ptame.interop.maps import score_maps  # noqa: E402
from ptame.methods import METHODS, default_method_keys, get_method  # noqa: E402
from ptame.methods.grad_cam import grad_cam  # noqa: E402
from ptame.methods.hooks import target_layer_gradients  # noqa: E402
from ptame.metrics import pointing_game  # noqa: E402
from ptame.serving.manifest import ModelEntry  # noqa: E402
from ptame.serving.models import ModelRegistry  # noqa: E402
from ptame.serving.session import ExplainSession  # noqa: E402
from tests.conftest import ROOT, TRAINED_DEMO, shapes_file  # noqa: E402

KEYS = (captum_methods.GRAD_CAM_KEY, captum_methods.OCCLUSION_KEY)
START_LIMIT_S = 180.0


@pytest.fixture(scope="module")
def trained() -> tuple:
    backbone, explainer = load_shapes_demo(TRAINED_DEMO)
    pixels, labels, masks = shapes_batch(6)
    return backbone, explainer, pixels, labels, masks


@pytest.fixture
def registered() -> Iterator[tuple[str, ...]]:
    keys = captum_methods.register()
    yield keys
    captum_methods.unregister()


def test_captum_layer_grad_cam_is_ptames_grad_cam(trained: tuple) -> None:
    backbone, _, pixels, _, _ = trained
    classes = torch.tensor([0, 1, 2, 3, 4, 5])  # each image's map of another class than its own, too
    for targets in (classes, classes.roll(1)):
        ours = grad_cam(backbone, pixels, targets)
        theirs = captum_methods.layer_grad_cam(backbone, pixels, targets)
        assert (ours - theirs).abs().max() <= 1e-6
        # Before the ReLU and the resize: captum's raw attribution is ptame's raw CAM.
        with torch.enable_grad():
            inputs = pixels.clone().requires_grad_(True)
            raw = LayerGradCam(backbone.logits, backbone.target_layer).attribute(inputs, target=targets)[:, 0]
        activations, gradients = target_layer_gradients(backbone, pixels, targets)
        cam = (gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1)
        torch.testing.assert_close(raw, cam, rtol=1e-5, atol=1e-6 * float(cam.abs().max()))


def test_captum_grad_cam_refuses_token_layers(trained: tuple) -> None:
    backbone, _, pixels, labels, _ = trained
    tokens = type(backbone)(**{**vars(backbone), "reshape_transform": lambda tokens: tokens})
    with pytest.raises(ValueError, match="needs a CNN layer"):
        captum_methods.layer_grad_cam(tokens, pixels[:1], labels[:1])


def test_occlusion_reports_its_forward_passes_and_does_not_depend_on_the_batch(trained: tuple) -> None:
    backbone, _, pixels, labels, _ = trained
    pixels, labels = pixels[:2], labels[:2]
    calls: list[tuple[int, int]] = []
    maps = captum_methods.occlusion(backbone, pixels, labels, grid=4, progress=lambda *done: calls.append(done))
    assert maps.shape == (2, 128, 128) and maps.min() >= 0 and maps.max() == 1
    assert captum_methods.occlusion_passes(512, {"grid": 4}) == 50  # 7 x 7 positions and the clean pass
    total = 1 + -(-49 // (captum_methods.OCCLUSION_BATCH // 2))
    assert calls == [(done, total) for done in range(1, total + 1)]
    one = captum_methods.occlusion(backbone, pixels[1:], labels[1:], grid=4, batch_size=5)
    np.testing.assert_allclose(one, maps[1:], atol=1e-5)
    with pytest.raises(ValueError, match="grid"):
        captum_methods.occlusion(backbone, pixels[:1], labels[:1], grid=0)


@pytest.mark.slow
def test_occlusion_maps_point_at_the_objects(trained: tuple) -> None:
    backbone, _, pixels, labels, masks = trained
    maps = captum_methods.occlusion(backbone, pixels, labels)  # the default grid: squares of 16 pixels
    assert pointing_game(maps, masks).float().mean() >= 5 / 6


def test_ptames_metrics_score_captum_maps(trained: tuple) -> None:
    backbone, _, pixels, labels, masks = trained
    maps = captum_methods.layer_grad_cam(backbone, pixels[:2], labels[:2])
    figures = score_maps(backbone, pixels[:2], maps, labels[:2], masks[:2], road_fractions=(0.1,), deletion_steps=4)
    assert all(np.isfinite(value) for value in figures.values()) and len(figures) == 12


def test_registering_adds_captum_after_the_built_ins_and_unregistering_removes_it() -> None:
    built_in = tuple(METHODS)
    assert not set(KEYS) & set(built_in)
    assert captum_methods.register() == KEYS and captum_methods.register() == KEYS  # idempotent
    try:
        assert tuple(METHODS) == (*built_in, *KEYS)
        assert get_method(captum_methods.OCCLUSION_KEY).streamed
        assert not get_method(captum_methods.GRAD_CAM_KEY).streamed
        assert not set(KEYS) & set(default_method_keys())
    finally:
        captum_methods.unregister()
    assert tuple(METHODS) == built_in


def test_the_app_offers_and_draws_captums_methods(registered: tuple[str, ...], tmp_path: Path) -> None:
    registry = ModelRegistry([ModelEntry.from_folder(TRAINED_DEMO)])
    registry.load("shapes")
    session = ExplainSession(registry)
    demo = app.build_demo(session, downloads=tmp_path, cache_examples=False)
    choices = [tuple(c) for block in demo.config["components"] for c in block.get("props", {}).get("choices") or []]
    assert ("Grad-CAM (captum)", KEYS[0]) in choices and ("Occlusion (captum)", KEYS[1]) in choices
    image = shapes_file(tmp_path, 0)
    handlers = app.Handlers(session, tmp_path)
    steps = list(handlers.explain(str(image), "shapes", ["ptame", "gradcam", KEYS[0]]))
    overlays = {key: steps[-1][overlay] for key, overlay in handlers.page.overlays.items()}
    assert list(overlays) == list(METHODS)
    assert overlays[KEYS[0]].visible and overlays[KEYS[0]].label.startswith("Grad-CAM (captum) · ")
    with np.load(steps[-1][handlers.page.maps_file]) as saved:
        np.testing.assert_allclose(saved[KEYS[0]], saved["gradcam"], atol=1e-6)


def test_the_command_line_offers_captums_methods_once_captum_is_installed(tmp_path: Path) -> None:
    """Plain ``python -m ptame explain``: captum is installed here, so its methods are registered at start."""
    image = shapes_file(tmp_path, 1)
    command = [sys.executable, "-m", "ptame", "explain", str(image), "--model", str(TRAINED_DEMO)]
    options = ["--methods", f"gradcam,{KEYS[0]}", "--out", str(tmp_path / "out")]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, *options], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "out" / "shapes-1.npz") as saved:
        np.testing.assert_allclose(saved[KEYS[0]], saved["gradcam"], atol=1e-6)


@pytest.mark.slow
def test_the_launched_app_serves_captums_methods_beside_the_built_ins(tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    port = free_port()
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_PORT": str(port), "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "app.py"],  # plain: captum is installed, so its methods are offered
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        start = time.perf_counter()
        while True:
            assert process.poll() is None, process.stderr.read()
            assert time.perf_counter() - start < START_LIMIT_S, "the app did not start"
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # not up yet
                time.sleep(0.5)
        image = handle_file(str(shapes_file(tmp_path, 2)))
        outputs = client.predict(image, "shapes", ["ptame", *KEYS], 0.5, "jet", 5, api_name="/explain")
        assert outputs[-1] and "Error" not in str(outputs[-1])
        with np.load(outputs[-2]) as saved:
            assert {"ptame", *KEYS} <= set(saved.files)
    finally:
        process.terminate()
        process.wait(timeout=60)
