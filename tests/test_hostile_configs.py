"""Hostile config values: each case is one changed file of a valid classifier or explainer folder whose
value decides a size (class counts, label tables, depths, input sides, crop_pct, mean/std, dtype,
tensor shapes). Through ``create_backbone``, ``PTAME.from_pretrained`` and the app's loader, each
must end in a ptame error naming the value within ``LIMIT_S`` seconds and ``LIMIT_MB`` of memory
above the process's (``peak_rss_mb``), or load correctly where it is legitimate. The values are
not those of issue 35's report: the bounds must hold for any value of the kind.
"""

import json
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers

from ptame import PTAME, create_backbone
from ptame.errors import MAX_MESSAGE_CHARS, CheckpointError, PtameError
from ptame.serving.loader import load_explainer, load_model
from ptame.serving.manifest import ModelEntry
from tests.conftest import peak_rss_mb, random_shapes_demo

LIMIT_S = 20.0  # per load, on a busy 2-core machine
LIMIT_MB = 500  # peak resident memory above the process's before the load
SIZE = 64


def edit_json(path: Path, **values: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def edit_nested(path: Path, key: str, **values: object) -> None:
    config = json.loads(path.read_text())
    config[key] = {**config.get(key, {}), **values}
    path.write_text(json.dumps(config))


def add_zero_byte_tensor(path: Path, shape: list[int]) -> None:
    """Declare one more tensor of ``shape`` holding no bytes in a safetensors file's header."""
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    end = max(entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__")
    header["ghost"] = {"dtype": "F32", "shape": shape, "data_offsets": [end, end]}
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size :])


def hf_resnet() -> torch.nn.Module:
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic", num_labels=5
    )
    return transformers.ResNetForImageClassification(config)


def hf_convnext() -> torch.nn.Module:
    return transformers.ConvNextForImageClassification(
        transformers.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=5)
    )


def hf_swin() -> torch.nn.Module:
    config = transformers.SwinConfig(
        image_size=SIZE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=5
    )
    return transformers.SwinForImageClassification(config)


def hf_vit(image_size: int = SIZE, patch_size: int = 16, heads: int = 2) -> torch.nn.Module:
    config = transformers.ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=heads,
        intermediate_size=32,
        num_labels=5,
    )
    return transformers.ViTForImageClassification(config)


def hf_folder(folder: Path, build: Callable[[], torch.nn.Module], processor: dict | None = None) -> Path:
    """A transformers classifier saved as users save it, with a preprocessor_config.json."""
    torch.manual_seed(0)
    build().eval().save_pretrained(folder)
    processor = processor or {"size": {"height": SIZE, "width": SIZE}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


# A case makes a classifier folder (in its own folder, with the demo's folders at hand) and returns it.
Make = Callable[[Path, Path], Path]


def timm_classifier(edit: Callable[[Path], None]) -> Make:
    def make(folder: Path, demo: Path) -> Path:
        shutil.copytree(demo / "classifier", folder)
        edit(folder / "config.json")
        return folder

    return make


def transformers_classifier(
    build: Callable[[], torch.nn.Module], edit: Callable[[Path], None], processor: dict | None = None
) -> Make:
    def make(folder: Path, demo: Path) -> Path:
        hf_folder(folder, build, processor)
        edit(folder)
        return folder

    return make


def nothing(folder: Path) -> None:
    pass


CLASSIFIER_CASES: list[tuple[str, Make, str]] = [
    # transformers: values the library would build from before any budget
    (
        "hf-num-labels-2.5m",
        transformers_classifier(hf_resnet, lambda f: edit_json(f / "config.json", num_labels=2_500_000)),
        "num_labels",
    ),
    (
        "hf-id2label-150k",
        transformers_classifier(
            hf_resnet, lambda f: edit_json(f / "config.json", id2label={str(i): "x" for i in range(150_001)})
        ),
        "config.id2label has 150,001 entries",
    ),
    (
        "hf-swin-depths-9m",
        transformers_classifier(hf_swin, lambda f: edit_json(f / "config.json", depths=[1, 9_000_000])),
        "depths",
    ),
    (
        "hf-resnet-3000-stages",
        transformers_classifier(hf_resnet, lambda f: edit_json(f / "config.json", depths=[1] * 3000)),
        "a list of 3,000 numbers",
    ),
    (
        "hf-vit-image-size-31337",
        transformers_classifier(hf_vit, lambda f: edit_json(f / "config.json", image_size=31_337)),
        "image_size of 31337 is not a side",
    ),
    (
        "hf-dtype-float64",
        transformers_classifier(hf_resnet, lambda f: edit_json(f / "config.json", dtype="float64")),
        "dtype must be one of",
    ),
    (
        "hf-crop-pct-tiny",
        transformers_classifier(
            hf_convnext, nothing, {"size": {"shortest_edge": SIZE}, "crop_pct": 0.0021, "do_center_crop": True}
        ),
        "crop_pct must be a number from 0.5 to 1",
    ),
    (
        "hf-legacy-crop-pct-zero",
        transformers_classifier(hf_convnext, nothing, {"size": SIZE, "crop_pct": 0}),
        "crop_pct",
    ),
    (
        "hf-size-dict-huge",
        transformers_classifier(hf_convnext, nothing, {"size": {"shortest_edge": 9000}}),
        "size of 9000 is not a side",
    ),
    (
        "hf-std-tiny",
        transformers_classifier(hf_resnet, nothing, {"size": SIZE, "image_mean": [0.5] * 3, "image_std": [1e-9, 1, 1]}),
        "the mean and std must be",
    ),
    (
        # the largest accepted input, 1024 pixels, in patches of 8: 16,384 tokens, whose attention
        # scores alone are GBs; the weights (2 MB) pay for no such activations
        "hf-vit-16k-tokens",
        transformers_classifier(lambda: hf_vit(1024, 8, heads=8), nothing, {"size": {"height": 1024, "width": 1024}}),
        "bytes of activations for one image",
    ),
    (
        "hf-zero-byte-overflowing-tensor",
        transformers_classifier(hf_resnet, lambda f: add_zero_byte_tensor(f / "model.safetensors", [2**66, 0])),
        "not a list of at most 8 sizes of 0 to",
    ),
    # timm folders (the demo's classifier)
    (
        "timm-input-size-40000",
        timm_classifier(lambda c: edit_nested(c, "pretrained_cfg", input_size=[3, 40_000, 40_000])),
        "input_size of 40000 is not a side",
    ),
    ("timm-crop-pct-tiny", timm_classifier(lambda c: edit_nested(c, "pretrained_cfg", crop_pct=0.0001)), "crop_pct"),
    ("timm-std-zero", timm_classifier(lambda c: edit_nested(c, "pretrained_cfg", std=[0, 0.2, 0.2])), "mean and std"),
    ("timm-num-classes-3m", timm_classifier(lambda c: edit_json(c, num_classes=3_000_000)), "num_classes"),
    (
        "timm-layers-3m",
        timm_classifier(lambda c: edit_nested(c, "model_args", layers=[1, 1, 3_000_000, 1])),
        "model_args.layers is a list of 4 numbers summing to 3,000,003",
    ),
    (
        "timm-label-names-120k",
        timm_classifier(lambda c: edit_json(c, label_names=["n"] * 120_000)),
        "label_names has 120,000 entries",
    ),
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_shapes_demo(tmp_path_factory.mktemp("demo") / "shapes")


def assert_refused(load: Callable[[], object], pattern: str) -> None:
    """``load()`` raises a ptame error matching ``pattern`` in a short message, within the bounds
    (a second call, measured)."""
    with pytest.raises(PtameError) as caught:
        load()
    message = str(caught.value)
    assert len(message) <= MAX_MESSAGE_CHARS and re.search(pattern, message), message
    seconds, megabytes = peak_rss_mb(load)
    assert seconds < LIMIT_S and megabytes < LIMIT_MB, (seconds, megabytes)


@pytest.mark.parametrize(
    ("make", "pattern"), [case[1:] for case in CLASSIFIER_CASES], ids=[case[0] for case in CLASSIFIER_CASES]
)
def test_a_hostile_classifier_config_is_refused_within_bounds(
    demo: Path, tmp_path: Path, make: Make, pattern: str
) -> None:
    spec = f"local-dir:{make(tmp_path / 'classifier', demo)}"
    assert_refused(lambda: create_backbone(spec), pattern)
    assert_refused(lambda: load_model(ModelEntry.from_classifier(spec)), pattern)


def explainer_case(edit: Callable[[Path], None]) -> Callable[[Path, Path], Path]:
    """A copy of the demo's explainer and auxiliary folders, ``edit`` applied to the auxiliary's config.json."""

    def make(folder: Path, demo: Path) -> Path:
        for part in ("explainer", "auxiliary"):
            shutil.copytree(demo / part, folder / part)
        edit(folder / "auxiliary" / "config.json")
        return folder / "explainer"

    return make


EXPLAINER_CASES = [
    (
        "aux-layers-2.5m",
        explainer_case(lambda c: edit_nested(c, "model_args", layers=[1, 2_500_000, 1, 1])),
        "summing to 2,500,003",
    ),
    ("aux-1000-stages", explainer_case(lambda c: edit_nested(c, "model_args", layers=[1] * 1000)), "1,000 numbers"),
    (
        "aux-input-size-12000",
        explainer_case(lambda c: edit_nested(c, "pretrained_cfg", input_size=[3, 12_000, 12_000])),
        "input_size of 12000 is not a side",
    ),
    ("aux-width-huge-float", explainer_case(lambda c: edit_nested(c, "model_args", mlp_ratio=1e300)), "is over 1e"),
]


@pytest.mark.parametrize(
    ("make", "pattern"), [case[1:] for case in EXPLAINER_CASES], ids=[case[0] for case in EXPLAINER_CASES]
)
def test_a_hostile_auxiliary_config_is_refused_within_bounds_and_the_classifier_keeps_serving(
    demo: Path, tmp_path: Path, make: Callable[[Path, Path], Path], pattern: str
) -> None:
    explainer = make(tmp_path, demo)
    assert_refused(lambda: PTAME.from_pretrained(explainer), pattern)
    entry = ModelEntry("hostile", "Hostile", f"local-dir:{demo / 'classifier'}", str(explainer))
    model = load_model(entry)
    assert model.explainer is None and re.search(pattern, model.explainer_problem), model.explainer_problem


def test_an_explainer_of_many_classes_at_a_large_auxiliary_size_loads_within_bounds(demo: Path, tmp_path: Path) -> None:
    """Legitimate, so it loads: 20,000 classes and auxiliary_size 2048 (the bound). The load probe
    runs at a bounded side on a bounded number of classes: every class's map at 2048 pixels would
    be tens of GB."""
    shutil.copytree(demo / "auxiliary", tmp_path / "auxiliary")
    torch.manual_seed(0)
    made = PTAME(
        num_classes=20_000,
        auxiliary="local-dir:../auxiliary",
        feature_levels=(1, 2, 3, 4),
        auxiliary_size=2048,
        auxiliary_root=tmp_path / "explainer",
    )
    made.save_pretrained(tmp_path / "explainer")
    del made
    loaded: list[PTAME] = []
    seconds, megabytes = peak_rss_mb(lambda: loaded.append(PTAME.from_pretrained(tmp_path / "explainer")))
    assert len(loaded) == 1 and loaded[0].num_classes == 20_000 and loaded[0].auxiliary_size == 2048
    assert seconds < LIMIT_S and megabytes < LIMIT_MB, (seconds, megabytes)


@pytest.mark.parametrize("raised", [MemoryError(), OverflowError("int too large"), TypeError("unpack"), KeyError("x")])
def test_the_apps_loader_keeps_the_classifier_whatever_the_explainer_raises(
    demo: Path, monkeypatch: pytest.MonkeyPatch, raised: BaseException
) -> None:
    def failing(*args: object, **kwargs: object) -> PTAME:
        raise raised

    monkeypatch.setattr(PTAME, "from_pretrained", failing)
    entry = ModelEntry.from_folder(demo)
    model = load_model(entry)
    assert model.backbone.class_names[0] == "circle" and model.explainer is None
    assert type(raised).__name__ in model.explainer_problem
    with pytest.raises(CheckpointError, match=type(raised).__name__):
        load_explainer(entry, "cpu", len(model.backbone.class_names))


@pytest.mark.parametrize(
    ("processor", "resize", "crop"),
    [
        ({"size": 72, "crop_pct": 0.9}, 80, 72),  # legacy: one int is the shortest edge, resized to 72 / 0.9
        ({"size": 72}, 72, 72),
        ({"size": {"shortest_edge": 80}, "crop_pct": 0.8}, 100, 80),
        (
            {"size": {"height": 72, "width": 72}, "do_center_crop": True, "crop_size": {"height": 64, "width": 64}},
            72,
            64,
        ),
    ],
)
def test_an_image_processors_size_in_every_form_gives_its_preprocessing(
    tmp_path: Path, processor: dict, resize: int, crop: int
) -> None:
    backbone = create_backbone(f"local-dir:{hf_folder(tmp_path / 'convnext', hf_convnext, processor)}")
    assert (backbone.preprocessing.resize, backbone.preprocessing.crop) == (resize, crop)
