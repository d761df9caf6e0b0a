"""The budget of a network built from an untrusted config (ptame.loading.budget): bytes, not elements;
a replaced tensor counted once; an absolute cap whatever is asked; activations counted on the meta
device. Every reference figure is computed here by hand (elements x bytes per element)."""

import pytest
import torch
from torch import nn

from ptame.loading.budget import (
    MAX_NETWORK_BYTES,
    MIN_ACTIVATION_BYTES,
    BudgetExceeded,
    build_within_budget,
    weights_budget,
)
from ptame.loading.untrusted import SafetensorsHeader, TensorInfo

LINEAR_BYTES = (1000 * 1000 + 1000) * 4  # nn.Linear(1000, 1000) in float32: weight and bias


def linear(dtype: torch.dtype = torch.float32) -> nn.Module:
    return nn.Linear(1000, 1000, dtype=dtype)


def test_the_budget_counts_bytes_not_elements() -> None:
    assert isinstance(build_within_budget(linear, LINEAR_BYTES, 10, "a float32 layer"), nn.Linear)
    with pytest.raises(BudgetExceeded, match=f"a float64 layer asks for more than {LINEAR_BYTES:,} bytes"):
        build_within_budget(lambda: linear(torch.float64), LINEAR_BYTES, 10, "a float64 layer")
    with pytest.raises(BudgetExceeded):
        build_within_budget(linear, LINEAR_BYTES - 4, 10, "a float32 layer one element over")


class LoadedLikeTransformers(nn.Module):
    """Built on the meta device, then each tensor replaced by a loaded one with ``setattr``, as
    transformers 5 loads a checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        with torch.device("meta"):
            self.layer = linear()
            self.register_buffer("scale", torch.empty(1000))
        for name, tensor in list(self.layer.named_parameters()):
            setattr(self.layer, name, nn.Parameter(torch.zeros(tensor.shape), requires_grad=False))
        self.scale = torch.ones(1000)


def test_a_replaced_tensor_is_counted_once() -> None:
    built = build_within_budget(LoadedLikeTransformers, LINEAR_BYTES + 4000, 10, "a loaded layer")
    assert built.layer.weight.device.type == "cpu" and built.scale.device.type == "cpu"
    with pytest.raises(BudgetExceeded):
        build_within_budget(LoadedLikeTransformers, LINEAR_BYTES + 3996, 10, "a loaded layer one element over")


def test_the_absolute_cap_holds_whatever_the_caller_asks() -> None:
    side = int((MAX_NETWORK_BYTES / 4) ** 0.5) + 1  # one square float32 weight just over the cap
    with pytest.raises(BudgetExceeded, match=f"more than {MAX_NETWORK_BYTES:,} bytes"):
        build_within_budget(lambda: nn.Linear(side, side, bias=False), 10**15, 10, "a huge layer")


def test_a_network_over_its_activation_budget_is_refused_on_the_meta_device() -> None:
    """16 channels of float32 at 2048 x 2048 pixels: 256 MiB for the first convolution's output alone."""

    def build() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1))

    assert isinstance(build_within_budget(build, 10**6, 10, "a small network", input_side=lambda model: 224), nn.Module)
    assert 16 * 2048 * 2048 * 4 >= MIN_ACTIVATION_BYTES
    with pytest.raises(BudgetExceeded, match="bytes of activations for one image"):
        build_within_budget(build, 10**6, 10, "a small network", input_side=lambda model: 2048)


def test_a_float16_weights_file_pays_for_a_float32_network() -> None:
    header = SafetensorsHeader({"w": TensorInfo("F16", (1000, 1000)), "b": TensorInfo("F64", (1000,))}, {})
    assert weights_budget(header) == 1000 * 1000 * 4 + 1000 * 8 + 16 * 2**20
    assert weights_budget(None) == MAX_NETWORK_BYTES
