"""PTAME built on a named or a custom auxiliary network: the input normalisation it feeds the network,
the names it records, and its checks of what it is given."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from ptame import PTAME, CheckpointError
from tests.conftest import save_timm_checkpoint

HALF_GREY_MEAN, QUARTER_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # not ImageNet's


class ShallowNet(nn.Module):
    """A custom auxiliary network: two feature levels of 8 and 16 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.second = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        first = self.first(images)
        return [first, self.second(first)]


def test_a_named_auxiliary_network_is_fed_with_its_own_normalisation(tmp_path: Path) -> None:
    """A local timm network normalised with mean 0.5 and std 0.25: PTAME reads them from its timm
    config (also after folding its BatchNorm layers), records them in config.json, and its features
    equal the network's own on (pixels - 0.5) / 0.25."""
    torch.manual_seed(0)
    network = timm.create_model("test_resnet", pretrained_cfg_overlay={"mean": HALF_GREY_MEAN, "std": QUARTER_STD})
    folder = save_timm_checkpoint(network, tmp_path / "auxiliary")
    explainer = PTAME(num_classes=3, auxiliary=f"local-dir:{folder}")
    assert explainer.auxiliary_mean == HALF_GREY_MEAN and explainer.auxiliary_std == QUARTER_STD
    explainer.save_pretrained(tmp_path / "explainer")
    config = json.loads((tmp_path / "explainer" / "config.json").read_text())
    assert config["auxiliary_mean"] == list(HALF_GREY_MEAN) and config["auxiliary_std"] == list(QUARTER_STD)

    features_only = timm.create_model(
        f"local-dir:{folder}", pretrained=True, features_only=True, out_indices=(1, 2, 3, 4)
    )
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = features_only.eval()((pixels - 0.5) / 0.25)
        got = explainer.features(pixels)
    assert len(got) == len(want) == 4
    for level, (mine, reference) in enumerate(zip(got, want)):
        assert torch.allclose(mine, reference, atol=1e-4, rtol=1e-4), level


def test_given_normalisation_wins_and_a_custom_network_defaults_to_imagenets() -> None:
    named = PTAME(
        num_classes=3, auxiliary="test_resnet", pretrained_auxiliary=False, auxiliary_mean=(0.1, 0.2, 0.3),
        auxiliary_std=(0.4, 0.5, 0.6),
    )  # fmt: skip
    assert named.auxiliary_mean == (0.1, 0.2, 0.3) and named.auxiliary_std == (0.4, 0.5, 0.6)
    custom = PTAME(num_classes=3, auxiliary=ShallowNet())
    assert custom.auxiliary_mean == (0.485, 0.456, 0.406) and custom.auxiliary_std == (0.229, 0.224, 0.225)


def test_a_custom_network_is_recorded_by_its_class_and_must_be_passed_again(tmp_path: Path) -> None:
    explainer = PTAME(num_classes=3, auxiliary=ShallowNet())
    assert explainer.auxiliary_name == "custom:ShallowNet"
    assert explainer.head.channels == (8, 16)  # read from a probe image: the network has no timm feature_info
    explainer.save_pretrained(tmp_path)
    message = (
        "this explainer was trained on a custom auxiliary network (ShallowNet); "
        "pass the same network: PTAME.from_pretrained(path, auxiliary=your_module)"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        PTAME.from_pretrained(tmp_path)


def test_class_names_are_kept_and_must_match_the_class_count(tmp_path: Path) -> None:
    explainer = PTAME(num_classes=2, auxiliary=ShallowNet(), class_names=("cat", "dog"))
    assert explainer.class_names == ["cat", "dog"]
    explainer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["class_names"] == ["cat", "dog"]
    with pytest.raises(ValueError, match="^3 class names for 2 classes$"):
        PTAME(num_classes=2, auxiliary=ShallowNet(), class_names=("cat", "dog", "bird"))


def test_explain_needs_one_class_per_image() -> None:
    explainer = PTAME(num_classes=3, auxiliary=ShallowNet()).eval()
    with pytest.raises(ValueError, match="^1 classes for 2 images$"):
        explainer.explain(torch.rand(2, 3, 32, 32), [1])


def test_the_defaults_are_imagenets_classes_on_resnet18s_four_levels() -> None:
    explainer = PTAME(pretrained_auxiliary=False)
    assert explainer.num_classes == 1000 and explainer.auxiliary_name == "resnet18.tv_in1k"
    assert explainer.head.channels == (64, 128, 256, 512)


class RecordingNet(nn.Module):
    """A custom auxiliary network that keeps the last input it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.seen = torch.empty(0)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        self.seen = images.clone()
        return [self.conv(images)]


@pytest.mark.parametrize("size", [48, 16])
def test_the_auxiliary_network_sees_the_images_at_auxiliary_size(size: int, tmp_path: Path) -> None:
    """Up (24x36 -> 48x72) and down (-> 16x24): PIL's bilinear resize of each channel (antialiased
    when shrinking), then ImageNet's normalisation; the maps come back at the images' own size,
    and config.json keeps the size."""
    network = RecordingNet()
    explainer = PTAME(num_classes=3, auxiliary=network, auxiliary_size=size)
    pixels = torch.rand(2, 3, 24, 36, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = explainer.explain(pixels, [0, 2])
    assert maps.shape == (2, 24, 36)
    width = size * 36 // 24
    resized = [
        [np.asarray(Image.fromarray(plane.numpy(), mode="F").resize((width, size), Image.BILINEAR)) for plane in image]
        for image in pixels
    ]
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    want = (torch.tensor(np.array(resized)) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert network.seen.shape == (2, 3, size, width)
    assert torch.allclose(network.seen, want, atol=1e-5)

    explainer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auxiliary_size"] == size
    assert PTAME.from_pretrained(tmp_path, auxiliary=RecordingNet()).auxiliary_size == size


def test_without_auxiliary_size_the_auxiliary_network_sees_the_images_as_they_are() -> None:
    network = RecordingNet()
    pixels = torch.rand(1, 3, 24, 36)
    PTAME(num_classes=3, auxiliary=network).features(pixels)
    assert network.seen.shape == (1, 3, 24, 36)
