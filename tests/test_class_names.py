"""A classifier's class names are numbered as its library numbers its outputs: name i is the name of
logit i, for more than ten classes (where "10" sorts before "2" as a string)."""

import json
from pathlib import Path

import pytest
import timm
import torch
from timm.data import CustomDatasetInfo

from ptame import create_backbone
from ptame.loading.backbones import Backbone
from tests.conftest import save_timm_checkpoint

CLASSES = 12
SIDE = 32


def transformers_vit(folder: Path, favoured: int) -> Path:
    """A one-layer ViT for ``CLASSES`` classes ("label 0", ...) saved with ``save_pretrained``; its head gives
    logit ``favoured`` 10 and every other 0, whatever the image."""
    transformers = pytest.importorskip("transformers")
    id2label = {index: f"label {index}" for index in range(CLASSES)}
    config = transformers.ViTConfig(
        image_size=SIDE, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=CLASSES, id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[favoured] = 10.0
    model.save_pretrained(folder)
    processor = {"size": {"height": SIDE, "width": SIDE}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def predicted_name(backbone: Backbone) -> str:
    """The class name of the backbone's top logit for a random image."""
    pixels = torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return backbone.class_names[int(backbone.logits(pixels).argmax())]


def rewrite_labels(config: Path, key: str, labels: object) -> None:
    """Set ``key`` of a saved config.json (the libraries write labels in index order; other tools may not)."""
    values = json.loads(config.read_text())
    values[key] = labels
    config.write_text(json.dumps(values))


SHUFFLED = (7, 2, 11, 0, 10, 1, 5, 3, 9, 4, 8, 6)


@pytest.mark.parametrize("favoured", [2, 10])
def test_a_transformers_classifiers_names_follow_its_id2label_by_number(tmp_path: Path, favoured: int) -> None:
    """id2label written in string order and then shuffled; the reference is transformers' own reading."""
    transformers = pytest.importorskip("transformers")
    folder = transformers_vit(tmp_path / "vit", favoured)
    for order in (sorted(map(str, range(CLASSES))), [str(index) for index in SHUFFLED]):
        rewrite_labels(folder / "config.json", "id2label", {key: f"label {key}" for key in order})
        own = transformers.AutoConfig.from_pretrained(str(folder)).id2label
        backbone = create_backbone(f"local-dir:{folder}")
        assert backbone.class_names == [own[index] for index in range(CLASSES)]
        assert backbone.class_names == [f"label {index}" for index in range(CLASSES)]
        assert predicted_name(backbone) == f"label {favoured}"


def test_a_transformers_label_table_with_a_gap_names_each_logit_by_its_own_number(tmp_path: Path) -> None:
    """id2label keyed 1..12 for 12 logits: logit 0 has no name in transformers' reading, logit 10 is "label 10"."""
    transformers = pytest.importorskip("transformers")
    folder = transformers_vit(tmp_path / "vit", favoured=10)
    from_one = {str(index): f"label {index}" for index in range(1, CLASSES + 1)}
    rewrite_labels(folder / "config.json", "id2label", from_one)
    own = transformers.AutoConfig.from_pretrained(str(folder)).id2label
    backbone = create_backbone(f"local-dir:{folder}")
    assert backbone.class_names == [own.get(index, f"class {index}") for index in range(CLASSES)]
    assert predicted_name(backbone) == "label 10"


def timm_resnet(folder: Path, label_names: object) -> Path:
    """A resnet10t for ``CLASSES`` classes in timm's folder format with ``label_names`` (timm's config key);
    its head gives logit 10 10 and every other 0, whatever the image."""
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=CLASSES, channels=(8, 8, 8, 8))
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, SIDE, SIDE)}
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[10] = 10.0
    save_timm_checkpoint(model, folder)
    rewrite_labels(folder / "config.json", "label_names", label_names)
    return folder


@pytest.mark.parametrize(
    "label_names",
    [
        [f"kind {index}" for index in range(CLASSES)],
        {str(index): f"kind {index}" for index in SHUFFLED},  # timm: "a dict id: name" (JSON keys are strings)
    ],
    ids=["list", "dict"],
)
def test_a_timm_classifiers_label_names_follow_its_outputs(tmp_path: Path, label_names: object) -> None:
    """The reference is timm's own reading (``CustomDatasetInfo.index_to_label_name``)."""
    folder = timm_resnet(tmp_path / "resnet", label_names)
    info = CustomDatasetInfo(json.loads((folder / "config.json").read_text())["label_names"])
    backbone = create_backbone(f"local-dir:{folder}")
    assert backbone.class_names == [info.index_to_label_name(index) for index in range(CLASSES)]
    assert backbone.class_names == [f"kind {index}" for index in range(CLASSES)]
    assert predicted_name(backbone) == "kind 10"
