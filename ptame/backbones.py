"""The classifiers that can be explained: name -> model, preprocessing, CAM target layer, labels.

A registry of builders (as in timm): the three classifiers of the paper, with their exact weights,
any other timm model name (including "hf-hub:org/name" and "local-dir:PATH"), and "MODULE:FUNCTION",
a function of the user's own that builds their classifier.
"""

import functools
import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as transforms

from ptame.errors import describe
from ptame.perturb import IMAGENET_MEAN, IMAGENET_STD, normalize
from ptame.timm_sources import SourceFolder, create_network, locate_network

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


def _timm_backbone(
    name: str, pretrained: bool, preprocessing: Preprocessing | None = None, local_files_only: bool = False
) -> Backbone:
    files = locate_network(name, pretrained, SourceFolder(Path.cwd(), local_files_only=local_files_only))
    model = _frozen(create_network(files, f"the classifier {describe(name)}"))
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


def _vgg16(pretrained: bool, local_files_only: bool) -> Backbone:
    backbone = _timm_backbone("vgg16.tv_in1k", pretrained, PAPER_PREPROCESSING, local_files_only)
    # The last ReLU of conv5_3 (14x14 at 224): the layer of the Grad-CAM paper, before the pool.
    backbone.target_layer = backbone.model.features[29]
    return backbone


def _resnet50(pretrained: bool, local_files_only: bool) -> Backbone:
    return _timm_backbone("resnet50.tv_in1k", pretrained, PAPER_PREPROCESSING, local_files_only)


def _vit_b_16(pretrained: bool, local_files_only: bool) -> Backbone:
    """torchvision's ViT-B/16 (its weights come from torchvision's own download, cached by torch.hub)."""
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
PAPER_BACKBONES: dict[str, Callable[[bool, bool], Backbone]] = {
    "vgg16": _vgg16,
    "resnet50": _resnet50,
    "vit_b_16": _vit_b_16,
}


# "MODULE:FUNCTION": an importable module (dots allowed) and a function in it. A timm name never
# has a colon; "hf-hub:ORG/NAME" has a slash and "local-dir:PATH" a hyphen before its colon.
USER_FUNCTION = re.compile(r"(?P<module>[A-Za-z_][\w.]*):(?P<function>[A-Za-z_]\w*)")


def last_convolution(model: nn.Module) -> nn.Module:
    """The last ``nn.Conv2d`` of a model in module order: the layer Grad-CAM reads by default.

    Raises:
        ValueError: the model has no Conv2d (return a ``Backbone`` with its target layer instead).
    """
    convolutions = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ValueError(
            f"{type(model).__name__} has no Conv2d layer for Grad-CAM to read: return a ptame.Backbone "
            "with its target_layer (and reshape_transform for a transformer)"
        )
    return convolutions[-1]


def _user_backbone(spec: str) -> Backbone:
    """The classifier a user's function builds: "MODULE:FUNCTION" (see ``create_backbone``)."""
    found = USER_FUNCTION.fullmatch(spec)
    module_name, function_name = found["module"], found["function"]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name!r} for the classifier {spec!r}: {error}") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"{module_name!r} has no function {function_name!r} (the classifier {spec!r})")
    built = function()
    if isinstance(built, Backbone):
        built.model = _frozen(built.model)
        return built
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module)):
        raise ValueError(
            f"{spec} returned {type(built).__name__}: it must return a ptame.Backbone or (model, ptame.Preprocessing)"
        )
    model, preprocessing = built
    if not isinstance(preprocessing, Preprocessing):
        raise ValueError(f"{spec} returned {type(preprocessing).__name__} as preprocessing, not a ptame.Preprocessing")
    model = _frozen(model)
    with torch.no_grad():
        probe = torch.zeros(1, 3, preprocessing.crop, preprocessing.crop, device=next(model.parameters()).device)
        num_classes = model(probe).shape[-1]
    return Backbone(
        name=spec,
        model=model,
        preprocessing=preprocessing,
        target_layer=last_convolution(model),
        reshape_transform=None,
        class_names=_class_names(model, num_classes),
    )


def create_backbone(name: str, pretrained: bool = True, local_files_only: bool = False) -> Backbone:
    """Build a classifier by name.

    Args:
        name: "vgg16", "resnet50", "vit_b_16" (the paper's), any timm model name, including
            "hf-hub:org/name" and "local-dir:PATH", or "MODULE:FUNCTION": a function of an
            importable module, called without arguments, that returns a ``Backbone`` or
            ``(model, Preprocessing)``; with the latter the class count comes from one forward
            pass, the class names from ``model.pretrained_cfg["label_names"]`` if present, and
            Grad-CAM's target layer is the model's last Conv2d.
        pretrained: load the weights (False: random initialisation, builds offline); a user's
            function builds its model as it likes.
        local_files_only: read local folders and the local Hugging Face cache only (offline),
            for this call alone.

    Returns:
        The backbone, frozen, in eval mode, on the CPU.

    Raises:
        ValueError: a "MODULE:FUNCTION" that cannot be imported or returns something else.
        CheckpointError: a timm name, Hub repo or folder that cannot be used: unknown, missing
            files (weights are read from safetensors only), a config over the size its weights
            hold (``ptame.timm_sources``).
    """
    builder = PAPER_BACKBONES.get(name)
    if builder is not None:
        return builder(pretrained, local_files_only)
    if USER_FUNCTION.fullmatch(name):
        return _user_backbone(name)
    return _timm_backbone(name, pretrained, local_files_only=local_files_only)
