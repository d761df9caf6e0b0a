"""The classifiers that can be explained: name -> model, preprocessing, CAM target layer, labels.

A registry of builders (as in timm): the three classifiers of the paper, with their exact weights,
and any other timm model name (including "hf-hub:org/name" and "local-dir:PATH").
"""

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as transforms

from ptame.perturb import IMAGENET_MEAN, IMAGENET_STD, normalize

INTERPOLATIONS = {"bilinear": transforms.InterpolationMode.BILINEAR, "bicubic": transforms.InterpolationMode.BICUBIC}


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing: resize the shorter side, center-crop, scale to [0, 1].

    Normalisation (mean, std) is applied by the consumer (``Backbone.logits``), so the cropped
    pixel-space image can be masked and overlaid.
    """

    resize: int
    crop: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL RGB image -> (3, crop, crop) float tensor in [0, 1]."""
        return transforms.Compose(
            [
                transforms.ToImage(),
                transforms.Resize(self.resize, interpolation=INTERPOLATIONS[self.interpolation], antialias=True),
                transforms.CenterCrop(self.crop),
                transforms.ToDtype(torch.float32, scale=True),
            ]
        )

    @classmethod
    def from_timm(cls, model: nn.Module) -> "Preprocessing":
        """The evaluation preprocessing a timm model's pretrained config declares."""
        config = timm.data.resolve_data_config({}, model=model)
        crop = int(config["input_size"][-1])
        interpolation = config["interpolation"] if config["interpolation"] in INTERPOLATIONS else "bilinear"
        return cls(
            resize=int(math.floor(crop / config["crop_pct"])),
            crop=crop,
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
            interpolation=interpolation,
        )


# The paper's evaluation transform: Resize 256, CenterCrop 224, ImageNet mean/std.
PAPER_PREPROCESSING = Preprocessing(resize=256, crop=224)


@dataclass
class Backbone:
    """A classifier with what explaining it needs.

    Attributes:
        name: registry name or timm name.
        model: normalised (B, 3, H, W) -> (B, K) logits; eval mode, frozen.
        preprocessing: how an image becomes its pixel-space input.
        target_layer: the layer Grad-CAM-style baselines read.
        reshape_transform: None for CNNs; for transformers, (B, N, C) tokens ->
            (B, C, h, w) grid, prefix tokens dropped.
        class_names: K display names.
    """

    name: str
    model: nn.Module
    preprocessing: Preprocessing
    target_layer: nn.Module
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None
    class_names: list[str]

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> (B, K) logits."""
        return self.model(normalize(pixels, self.preprocessing.mean, self.preprocessing.std))

    def to(self, device: torch.device | str) -> "Backbone":
        """Move the model to a device (in place); returns self."""
        self.model.to(device)
        return self


def tokens_to_grid(tokens: torch.Tensor, prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """Transformer tokens -> feature map: drop the prefix (class) tokens, reshape patches.

    Args:
        tokens: (B, prefix_tokens + h * w, C).
        prefix_tokens: number of leading non-patch tokens.
        grid: (h, w) patch grid.

    Returns:
        (B, C, h, w).
    """
    patches = tokens[:, prefix_tokens:, :]
    return patches.reshape(patches.shape[0], grid[0], grid[1], patches.shape[2]).permute(0, 3, 1, 2)


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names (first synonym of each WordNet description), as timm ships them."""
    info = timm.data.ImageNetInfo()
    return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(1000))


def _class_names(model: nn.Module, num_classes: int) -> list[str]:
    label_names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if label_names and len(label_names) == num_classes:
        return list(label_names)
    if num_classes == 1000:
        return list(imagenet_class_names())
    return [f"class {index}" for index in range(num_classes)]


def _frozen(model: nn.Module) -> nn.Module:
    return model.requires_grad_(False).eval()


def _timm_backbone(name: str, pretrained: bool, preprocessing: Preprocessing | None = None) -> Backbone:
    model = _frozen(timm.create_model(name, pretrained=pretrained))
    if hasattr(model, "patch_embed") and hasattr(model, "blocks"):
        target_layer = model.blocks[-1].norm1
        reshape = functools.partial(
            tokens_to_grid, prefix_tokens=model.num_prefix_tokens, grid=tuple(model.patch_embed.grid_size)
        )
    else:
        target_layer = model.get_submodule(model.feature_info[-1]["module"])
        reshape = None
    return Backbone(
        name=name,
        model=model,
        preprocessing=preprocessing or Preprocessing.from_timm(model),
        target_layer=target_layer,
        reshape_transform=reshape,
        class_names=_class_names(model, model.num_classes),
    )


def _vgg16(pretrained: bool) -> Backbone:
    backbone = _timm_backbone("vgg16.tv_in1k", pretrained, PAPER_PREPROCESSING)
    # The last ReLU of conv5_3 (14x14 at 224): the layer of the Grad-CAM paper, before the pool.
    backbone.target_layer = backbone.model.features[29]
    return backbone


def _resnet50(pretrained: bool) -> Backbone:
    return _timm_backbone("resnet50.tv_in1k", pretrained, PAPER_PREPROCESSING)


def _vit_b_16(pretrained: bool) -> Backbone:
    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1 if pretrained else None
    model = _frozen(torchvision.models.vit_b_16(weights=weights))
    return Backbone(
        name="vit_b_16",
        model=model,
        preprocessing=PAPER_PREPROCESSING,
        target_layer=model.encoder.layers[-1].ln_1,
        reshape_transform=functools.partial(tokens_to_grid, prefix_tokens=1, grid=(14, 14)),
        class_names=list(imagenet_class_names()),
    )


# The paper's classifiers, with the exact weights their explainers are trained for:
# timm's vgg16.tv_in1k and resnet50.tv_in1k hold torchvision's IMAGENET1K_V1 tensors; no timm
# tag holds torchvision's ViT-B/16 weights, so that one comes from torchvision.
PAPER_BACKBONES: dict[str, Callable[[bool], Backbone]] = {
    "vgg16": _vgg16,
    "resnet50": _resnet50,
    "vit_b_16": _vit_b_16,
}


def create_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a classifier by name.

    Args:
        name: "vgg16", "resnet50", "vit_b_16" (the paper's), or any timm model name, including
            "hf-hub:org/name" and "local-dir:PATH".
        pretrained: load the weights (False: random initialisation, builds offline).

    Returns:
        The backbone, frozen, in eval mode, on the CPU.
    """
    builder = PAPER_BACKBONES.get(name)
    if builder is not None:
        return builder(pretrained)
    return _timm_backbone(name, pretrained)
