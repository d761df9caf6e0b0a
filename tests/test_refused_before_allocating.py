"""A network over its budget is refused before any of its tensors is allocated: the counted first build
runs on the meta device. ``RealTensors`` watches every tensor an operation returns off the meta device;
resident memory would not show it, since a refused tensor is allocated but never written to."""

import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ptame import PTAME, CheckpointError, create_backbone
from ptame.loading.budget import BudgetExceeded, build_within_budget
from tests.conftest import random_shapes_demo, save_timm_checkpoint

MB = 2**20


class RealTensors(TorchDispatchMode):
    """While active: ``largest``, the bytes of the largest tensor any operation returned off the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's signature
        output = func(*args, **(kwargs or {}))
        for value in tree_leaves(output):
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                self.largest = max(self.largest, value.numel() * value.element_size())
        return output


def test_the_spy_sees_a_tensor_that_is_allocated_and_not_one_on_the_meta_device() -> None:
    with RealTensors() as real:
        nn.Linear(100, 1000)
    assert real.largest == 100 * 1000 * 4
    with RealTensors() as real, torch.device("meta"):
        nn.Linear(100, 1000)
    assert real.largest == 0


def test_a_layer_over_the_budget_is_refused_before_its_weight_is_allocated() -> None:
    """A budget of 1 MB (bytes or elements alike) against a (10000, 1000) float32 weight of 40 MB."""
    with RealTensors() as real, pytest.raises(BudgetExceeded):
        build_within_budget(lambda: nn.Linear(1000, 10_000), 1 * MB, 100, "a wide layer")
    assert real.largest < 1 * MB


def test_a_layer_within_the_budget_is_built_for_real() -> None:
    with RealTensors() as real:
        layer = build_within_budget(lambda: nn.Linear(100, 1000), 1 * MB, 100, "a small layer")
    assert layer.weight.device.type == "cpu" and real.largest == 100 * 1000 * 4


def edit_config(path: Path, edit: dict[str, object]) -> None:
    config = json.loads(path.read_text())
    for key, value in edit.items():
        if isinstance(value, dict):
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_a_timm_folder_asking_for_a_wide_network_is_refused_before_allocating_it(tmp_path: Path) -> None:
    """resnet10t saved with 8 channels per stage; its config then asks for 1024 in the last stage, whose
    3x3 convolution alone is 1024 x 1024 x 9 x 4 bytes = 36 MB (the weights file pays for a few KB)."""
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=4, channels=(8, 8, 8, 8))
    folder = save_timm_checkpoint(model, tmp_path / "resnet")
    edit_config(folder / "config.json", {"model_args": {"channels": [8, 8, 8, 1024]}})
    with RealTensors() as real, pytest.raises(CheckpointError, match="asks for more than"):
        create_backbone(f"local-dir:{folder}")
    assert real.largest < 1 * MB


def test_a_transformers_folder_asking_for_a_wide_network_is_refused_before_allocating_it(tmp_path: Path) -> None:
    """A one-layer ViT saved at width 16; its config then asks for width 64 and an MLP of 100,000, whose
    first weight alone is 100,000 x 64 x 4 bytes = 24 MB (the weights file pays for a few KB)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    edit_config(tmp_path / "vit" / "config.json", {"hidden_size": 64, "intermediate_size": 100_000})
    with RealTensors() as real, pytest.raises(CheckpointError, match="asks for more than"):
        create_backbone(f"local-dir:{tmp_path / 'vit'}")
    assert real.largest < 1 * MB


def test_an_explainers_auxiliary_network_asking_for_a_wide_network_is_refused_before_allocating_it(
    tmp_path: Path,
) -> None:
    """The shapes demo's explainer folders; the auxiliary network's config (resnet10t, 128 channels in its last
    stage, 1.3 MB of weights) then asks for 2048, whose 3x3 convolution alone is 2048 x 2048 x 9 x 4 bytes = 144 MB.
    What is allocated for real is the explainer's own small head, nothing of the refused network."""
    good = random_shapes_demo(tmp_path / "good")
    config = good / "auxiliary" / "config.json"
    channels = json.loads(config.read_text())["model_args"]["channels"]
    edit_config(config, {"model_args": {"channels": [*channels[:3], 2048]}})
    with RealTensors() as real, pytest.raises(CheckpointError, match="asks for more than"):
        PTAME.from_pretrained(good / "explainer")
    assert real.largest < 1 * MB
