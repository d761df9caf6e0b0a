import re
import shutil
import time
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants as hub_constants

from ptame import PTAME, CheckpointError
from ptame.serving.manifest import DEFAULT_MANIFEST, LoadedModel, ModelEntry, hub_reachable, load_manifest, load_model
from tests.conftest import ROOT, save_timm_checkpoint

ONE_MODEL = """
[[models]]
key = "demo"
display_name = "Demo"
classifier = "local-dir:models/classifier"
explainer = "./models/explainer"
"""


def write_manifest(folder: Path, text: str) -> Path:
    path = folder / "manifest.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def bundle(explainer: PTAME, tmp_path: Path) -> Path:
    """A folder as `python -m train shapes` lays it out: a 10-class classifier and its explainer."""
    torch.manual_seed(0)
    save_timm_checkpoint(timm.create_model("resnet10t", num_classes=10), tmp_path / "models" / "classifier")
    explainer.save_pretrained(tmp_path / "models" / "explainer")
    return tmp_path / "models"


@pytest.fixture
def hub_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline mode with empty caches: nothing of the Hub or torchvision is available."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))


def test_the_project_manifest_offers_the_demo_first_then_the_papers_models() -> None:
    entries = load_manifest()
    assert [entry.key for entry in entries] == ["shapes", "vgg16", "resnet50", "vit_b_16"]
    shapes = entries[0]
    assert shapes.classifier == f"local-dir:{ROOT / 'checkpoints' / 'shapes' / 'classifier'}"
    assert shapes.explainer == str(ROOT / "checkpoints" / "shapes" / "explainer")
    assert shapes.explainer_is_folder and shapes.explainer_revision is None
    for entry in entries[1:]:
        assert entry.classifier == entry.key
        assert entry.explainer == f"ptame/ptame-{entry.key}"
        assert not entry.explainer_is_folder
        assert entry.explainer_revision
        assert "ImageNet" in entry.display_name
    assert DEFAULT_MANIFEST == ROOT / "checkpoints" / "manifest.toml"


def test_relative_folders_start_at_the_manifests_folder(tmp_path: Path) -> None:
    (entry,) = load_manifest(write_manifest(tmp_path, ONE_MODEL))
    assert entry == ModelEntry(
        key="demo",
        display_name="Demo",
        classifier=f"local-dir:{tmp_path / 'models' / 'classifier'}",
        explainer=str(tmp_path / "models" / "explainer"),
        explainer_revision=None,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[models]\nkey = 1", "is not valid TOML"),
        ("", "lists no models"),
        ("models = []", "lists no models"),
        ("title = 'x'\n" + ONE_MODEL, "unknown top-level keys \\['title'\\]"),
        ("models = ['demo']", "model 1 must be a \\[\\[models\\]\\] table"),
        (ONE_MODEL + "colour = 'red'", "unknown fields \\['colour'\\]"),
        (ONE_MODEL.replace('display_name = "Demo"', ""), "lacks the fields \\['display_name'\\]"),
        (ONE_MODEL.replace('"Demo"', "3"), "display_name must be a non-empty string, got 3"),
        (ONE_MODEL.replace('"Demo"', '"  "'), "display_name must be a non-empty string"),
        (ONE_MODEL.replace('"demo"', '"my demo"'), "key 'my demo' may hold only"),
        (ONE_MODEL + ONE_MODEL, "repeats the keys \\['demo'\\]"),
        (ONE_MODEL + 'explainer_revision = "main"', "explainer_revision applies to Hub repos only"),
    ],
    ids=[
        "not-toml",
        "empty",
        "no-models",
        "top-level-key",
        "not-a-table",
        "unknown-field",
        "missing-field",
        "not-a-string",
        "blank",
        "bad-key",
        "repeated-key",
        "revision-for-folder",
    ],
)
def test_malformed_manifests_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        load_manifest(write_manifest(tmp_path, text))


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read the model manifest"):
        load_manifest(tmp_path / "nowhere.toml")


def test_from_folder(bundle: Path) -> None:
    entry = ModelEntry.from_folder(bundle)
    assert entry.key == entry.display_name == "models"
    assert entry.classifier == f"local-dir:{bundle / 'classifier'}"
    assert entry.explainer == str(bundle / "explainer") and entry.explainer_is_folder
    shutil.rmtree(bundle / "explainer")
    with pytest.raises(CheckpointError, match="models has no explainer/ folder"):
        ModelEntry.from_folder(bundle)


def test_load_model_from_a_manifest_of_local_folders(bundle: Path, explainer: PTAME, tmp_path: Path) -> None:
    (entry,) = load_manifest(write_manifest(tmp_path, ONE_MODEL))
    loaded = load_model(entry)
    assert isinstance(loaded, LoadedModel) and loaded.entry == entry
    assert not loaded.explainer.training and not loaded.backbone.model.training
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert loaded.backbone.logits(pixels).shape == (2, 10)
        assert torch.equal(loaded.explainer(pixels), explainer(pixels))


def test_an_explainer_for_another_class_count_is_refused(bundle: Path) -> None:
    torch.manual_seed(0)
    save_timm_checkpoint(timm.create_model("resnet10t", num_classes=7), bundle / "classifier")
    with pytest.raises(CheckpointError, match="'models' has 10 classes, its classifier .* has 7"):
        load_model(ModelEntry.from_folder(bundle))


def test_missing_explainer_names_the_model(bundle: Path) -> None:
    entry = ModelEntry("demo", "Demo model", f"local-dir:{bundle / 'classifier'}", str(bundle / "nowhere"))
    with pytest.raises(CheckpointError, match="explainer .*nowhere of 'Demo model'.*does not exist"):
        load_model(entry)


@pytest.mark.parametrize("key", ["resnet50", "vit_b_16"])
def test_offline_without_cached_weights_fails_fast_and_clearly(hub_offline: None, key: str) -> None:
    entry = next(entry for entry in load_manifest() if entry.key == key)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=re.escape(f"cannot load the classifier {key} of '{entry.display_name}'")):
        load_model(entry)
    assert time.perf_counter() - start < 30


def test_cached_classifier_with_missing_hub_explainer_offline(hub_offline: None, tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = save_timm_checkpoint(timm.create_model("resnet10t", num_classes=10), tmp_path / "classifier")
    entry = ModelEntry("demo", "Demo", f"local-dir:{folder}", "ptame/ptame-demo", "main")
    with pytest.raises(
        CheckpointError, match="explainer ptame/ptame-demo of 'Demo'.*not in the local Hugging Face cache"
    ):
        load_model(entry)


def test_unreachable_hub_switches_to_the_cache_only_and_restores_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setattr("ptame.serving.manifest.hub_reachable", lambda: False)
    entry = ModelEntry("r50", "ResNet-50", "resnet50", "ptame/ptame-resnet50", "main")
    with pytest.raises(CheckpointError, match="the Hub is unreachable or offline mode is on"):
        load_model(entry)
    assert hub_constants.HF_HUB_OFFLINE is False


def test_hub_reachable_is_false_for_a_closed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    assert hub_reachable(timeout=1.0) is False
    assert time.perf_counter() - start < 5
