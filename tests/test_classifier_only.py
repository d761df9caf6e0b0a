"""Classifier-only models: the classifier loads, the explainer does not (none given, not there yet).

The baselines run; P-TAME says why it is missing and how to train its explainer; once the explainer
folder appears, P-TAME arrives without a new registry. The models are the shapes demo's networks
with seeded random weights (tests.conftest.random_shapes_demo).
"""

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from ptame import PTAME, Backbone, grad_cam, score_cam
from ptame.errors import CheckpointError, ExplainerMissing, ModelUnavailable
from ptame.methods import get_method
from ptame.serving.captions import domain_note
from ptame.serving.images import read_image
from ptame.serving.loader import load_explainer
from ptame.serving.manifest import ModelEntry
from ptame.serving.models import ModelRegistry, build_registry
from ptame.serving.session import ExplainSession
from tests.conftest import random_shapes_demo, save_timm_checkpoint, shapes_file

SHAPES_DOMAIN = "six synthetic shapes on textured backgrounds"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """classifier/, auxiliary/ and explainer/ of the shapes demo, with seeded random weights."""
    return random_shapes_demo(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture
def classifier_only(demo: Path, tmp_path: Path) -> Path:
    """A copy of the demo without its explainer/: tmp_path/only/{classifier,auxiliary}."""
    folder = tmp_path / "only"
    for part in ("classifier", "auxiliary"):
        shutil.copytree(demo / part, folder / part)
    return folder


def add_explainer(demo: Path, folder: Path) -> None:
    """Copy the demo's explainer into folder/explainer (it reads ../auxiliary)."""
    shutil.copytree(demo / "explainer", folder / "explainer")


def pixels_of(path: Path, backbone: Backbone) -> torch.Tensor:
    """The (1, 3, S, S) input of an image file, by the classifier's own preprocessing."""
    with Image.open(path) as image:
        return backbone.preprocessing.transform()(image.convert("RGB")).unsqueeze(0)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``condition()`` every 20 ms until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_the_baselines_run_and_p_tame_says_how_to_get_an_explainer(classifier_only: Path, tmp_path: Path) -> None:
    entry = ModelEntry.from_folder(classifier_only)
    assert entry.explainer is None
    registry = ModelRegistry([entry])
    model = registry.load("only")
    (status,) = registry.statuses()
    assert status.state == "ready" and "no explainer is configured" in status.explainer_problem
    assert not model.has_explainer and not registry.explainers_pending()  # none named: none will come
    session = ExplainSession(registry)
    path = shapes_file(tmp_path, 3)
    image = session.read(path)

    analysis = session.analyse(image, "only")
    assert analysis.ptame_maps is None and analysis.ptame_seconds == 0.0
    pixels = pixels_of(path, model.backbone)
    torch.testing.assert_close(analysis.pixels, pixels)
    classes = torch.tensor([2])
    expected_gradcam = grad_cam(model.backbone, pixels, classes)[0].numpy()
    expected_scorecam = score_cam(model.backbone, pixels, classes, **get_method("scorecam").options)[0].numpy()
    np.testing.assert_allclose(session.explain(image, "only", 2, "gradcam").saliency, expected_gradcam, atol=1e-6)
    np.testing.assert_allclose(session.explain(image, "only", 2, "scorecam").saliency, expected_scorecam, atol=1e-6)

    classifier = "local-dir:…/classifier"  # a visitor reads it: the path's last part only
    command = f"`python -m train explainer --classifier {classifier} --data IMAGE_FOLDER --out runs/only`"
    with pytest.raises(ExplainerMissing) as missing:
        session.explain(image, "only", 2, "ptame")
    message = str(missing.value)
    assert message.startswith("No P-TAME map for only: ")
    assert "no explainer is configured for it" in message and command in message
    assert f"`--classifier {classifier} --explainer runs/only/explainer`" in message
    assert isinstance(missing.value, LookupError)
    assert session.cached(image, "only", 2, "ptame") is None


def test_a_stream_skips_p_tame_and_gives_the_others(classifier_only: Path, tmp_path: Path) -> None:
    registry = ModelRegistry([ModelEntry.from_folder(classifier_only)])
    model = registry.load("only")
    session = ExplainSession(registry)
    image = session.read(shapes_file(tmp_path, 1))
    updates = list(session.explain_stream(image, "only", 0, ["ptame", "scorecam", "gradcam"]))
    assert len(updates) == 2  # before Score-CAM, then the end
    for update in updates:
        assert list(update.unavailable) == ["ptame"]
        assert update.unavailable["ptame"].startswith("No P-TAME map for only: ")
        assert "ptame" not in update.explanations and "ptame" not in update.pending
    assert updates[0].pending == ["scorecam"] and not updates[0].done
    final = updates[-1]
    assert final.done and list(final.explanations) == ["scorecam", "gradcam"]
    pixels = pixels_of(shapes_file(tmp_path, 1), model.backbone)
    expected = grad_cam(model.backbone, pixels, torch.tensor([0]))[0].numpy()
    np.testing.assert_allclose(final.explanations["gradcam"].saliency, expected, atol=1e-6)


def test_a_model_with_its_explainer_has_nothing_unavailable(demo: Path, tmp_path: Path) -> None:
    registry = ModelRegistry([ModelEntry.from_folder(demo)])
    registry.load("demo")
    session = ExplainSession(registry)
    image = session.read(shapes_file(tmp_path, 0))
    (final,) = session.explain_stream(image, "demo", 0, ["ptame", "gradcam"])
    assert final.unavailable == {} and list(final.explanations) == ["ptame", "gradcam"]
    assert registry.statuses()[0].explainer_problem == "" and not registry.explainers_pending()


def test_the_explainer_arrives_without_a_new_registry(demo: Path, classifier_only: Path, tmp_path: Path) -> None:
    entry = ModelEntry.from_classifier(
        f"local-dir:{classifier_only / 'classifier'}", str(classifier_only / "explainer")
    )
    registry = ModelRegistry([entry], explainer_retry_s=3600.0)
    key = entry.key
    assert not registry.load(key).has_explainer
    assert "does not exist" in registry.statuses()[0].explainer_problem
    assert "…/explainer" in registry.statuses()[0].explainer_problem  # its last part: no server path
    assert str(classifier_only) not in registry.statuses()[0].explainer_problem
    assert registry.explainers_pending()
    session = ExplainSession(registry)
    image = session.read(shapes_file(tmp_path, 4))
    assert session.analyse(image, key).ptame_maps is None
    assert registry.retry_explainer(key) is False  # still not there

    add_explainer(demo, classifier_only)
    assert registry.retry_explainer(key) is True
    model = registry.get(key)
    assert model.has_explainer and registry.statuses()[0].state == "ready"
    assert registry.statuses()[0].explainer_problem == "" and not registry.explainers_pending()
    analysis = session.analyse(image, key)
    assert analysis.ptame_maps is not None and analysis.ptame_maps.shape[0] == 6
    assert session.cached_analysis(image, key) is analysis
    saliency = session.explain(image, key, 3, "ptame").saliency
    with torch.no_grad():
        expected = model.explainer.explain(analysis.pixels, [3])[0].numpy()
    np.testing.assert_allclose(saliency, expected, atol=1e-5)
    (final,) = session.explain_stream(image, key, 3, ["ptame", "gradcam"])
    assert final.unavailable == {} and list(final.explanations) == ["ptame", "gradcam"]


def test_get_retries_the_explainer_in_the_background_once_at_a_time(
    demo: Path, classifier_only: Path, tmp_path: Path
) -> None:
    entry = ModelEntry(
        "only", "Only", f"local-dir:{classifier_only / 'classifier'}", str(classifier_only / "explainer")
    )
    calls: list[str] = []
    release = threading.Event()

    def slow_explainer_loader(entry: ModelEntry, device: str, classes: int) -> PTAME:
        calls.append(entry.key)
        assert release.wait(timeout=30)
        return load_explainer(entry, device, classes)

    registry = ModelRegistry([entry], explainer_loader=slow_explainer_loader, explainer_retry_s=0.0)
    registry.load("only")
    add_explainer(demo, classifier_only)
    start = time.monotonic()
    for _ in range(3):
        assert not registry.get("only").has_explainer  # returns at once, while the retry waits
    assert time.monotonic() - start < 5
    assert wait_for(lambda: calls == ["only"])
    time.sleep(0.1)
    assert calls == ["only"]  # never two attempts at once
    release.set()
    assert wait_for(lambda: registry.statuses()[0].explainer_problem == "")
    assert registry.get("only").has_explainer and calls == ["only"]


def test_gets_during_a_failing_retry_start_no_other_and_the_problem_is_updated(classifier_only: Path) -> None:
    entry = ModelEntry(
        "only", "Only", f"local-dir:{classifier_only / 'classifier'}", str(classifier_only / "explainer")
    )
    calls: list[str] = []
    release = threading.Event()

    def failing_explainer_loader(entry: ModelEntry, device: str, classes: int) -> PTAME:
        calls.append(entry.key)
        assert release.wait(timeout=30)
        raise CheckpointError("the explainer is still training")

    registry = ModelRegistry([entry], explainer_loader=failing_explainer_loader, explainer_retry_s=0.0)
    registry.load("only")
    assert "does not exist" in registry.statuses()[0].explainer_problem
    for _ in range(3):
        registry.get("only")  # the first starts a retry; the others find it running
    assert wait_for(lambda: calls == ["only"])
    release.set()
    assert wait_for(lambda: registry.statuses()[0].explainer_problem == "the explainer is still training")
    time.sleep(0.2)
    assert calls == ["only"] and registry.statuses()[0].state == "ready"
    assert not registry.get("only").has_explainer and registry.explainers_pending()


def test_retry_due_explainers_brings_an_explainer_that_arrived(classifier_only: Path, demo: Path) -> None:
    """What the app's model poll calls: no request needed for P-TAME to appear."""
    entry = ModelEntry(
        "only", "Only", f"local-dir:{classifier_only / 'classifier'}", str(classifier_only / "explainer")
    )
    registry = ModelRegistry([entry], explainer_retry_s=0.0)
    registry.load("only")
    add_explainer(demo, classifier_only)
    registry.retry_due_explainers()
    assert wait_for(lambda: registry.statuses()[0].explainer_problem == "")
    assert not registry.explainers_pending()


def test_no_background_retry_before_explainer_retry_s(classifier_only: Path) -> None:
    entry = ModelEntry(
        "only", "Only", f"local-dir:{classifier_only / 'classifier'}", str(classifier_only / "explainer")
    )
    calls: list[str] = []

    def counting_loader(entry: ModelEntry, device: str, classes: int) -> PTAME:
        calls.append(entry.key)
        return load_explainer(entry, device, classes)

    registry = ModelRegistry([entry], explainer_loader=counting_loader, explainer_retry_s=3600.0)
    registry.load("only")
    registry.get("only")
    registry.load("only")
    time.sleep(0.2)
    assert calls == []


def test_photo_model_is_the_first_ready_1000_class_model(classifier_only: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = save_timm_checkpoint(timm.create_model("test_resnet", num_classes=1000), tmp_path / "photos")
    shapes = ModelEntry.from_folder(classifier_only)
    photos = ModelEntry.from_classifier(f"local-dir:{folder}")
    session = ExplainSession(ModelRegistry([shapes, photos]))
    assert session.photo_model() is None  # nothing loaded
    session.registry.load(shapes.key)
    assert session.photo_model() is None  # 6 classes
    session.registry.load(photos.key)
    assert session.photo_model() == photos.key
    assert ExplainSession(ModelRegistry([])).photo_model() is None


def test_domain_notes() -> None:
    entry = ModelEntry("shapes", "Shapes demo", "x", domain=SHAPES_DOMAIN, image_size=128)
    assert domain_note(entry, (128, 128)) is None
    assert domain_note(entry, (300, 200)) == (
        f"The Shapes demo knows only {SHAPES_DOMAIN}. This 300x200 image is not from its world: "
        "the prediction and the maps say little about it."
    )
    assert domain_note(entry, (128, 64)) is not None
    assert domain_note(ModelEntry("photos", "Photos", "x", domain="photos"), (300, 200)) is None
    session = ExplainSession(ModelRegistry([entry]))
    assert session.domain_note(read_image(Image.new("RGB", (128, 128))), "shapes") is None
    assert session.domain_note(read_image(Image.new("RGB", (300, 200))), "shapes") == domain_note(entry, (300, 200))
    with pytest.raises(ModelUnavailable, match="unknown model 'nope'"):
        session.domain_note(read_image(Image.new("RGB", (128, 128))), "nope")


def test_build_registry_adds_classifiers_last(classifier_only: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.toml"
    manifest.write_text('[[models]]\nkey = "a"\ndisplay_name = "A"\nclassifier = "resnet18"\n')
    replacing = ModelEntry("only", "Replacing", "resnet50")
    extra = ModelEntry.from_classifier("resnet50")
    registry, problems = build_registry(manifest, [classifier_only], classifiers=[replacing, extra])
    assert problems == []
    assert list(registry.entries) == ["a", "only", "resnet50"]
    assert registry.entries["only"] == replacing and registry.entries["a"].explainer is None
