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

from ptame.errors import CheckpointError, describe
from ptame.loading.hf_transformers import is_transformers_config, load_transformers_classifier, transformers_folder
from ptame.loading.network_names import CONFIG_NAME, NetworkFiles, SourceFolder, locate_network
from ptame.loading.target_layers import find_target_layer
from ptame.loading.timm_sources import create_network
from ptame.loading.untrusted import read_json_object
from ptame.loss import LossWeights
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
        target_layer_name: the target layer's dotted path ("" where it was given as a module).
    """

    name: str
    model: nn.Module
    preprocessing: Preprocessing
    target_layer: nn.Module
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None
    class_names: list[str]
    target_layer_name: str = ""

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> (B, K) logits."""
        return self.model(normalize(pixels, self.preprocessing.mean, self.preprocessing.std))

    def to(self, device: torch.device | str) -> "Backbone":
        """Move the model to a device (in place); returns self."""
        self.model.to(device)
        return self


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names (first synonym of each WordNet description), as timm ships them."""
    info = timm.data.ImageNetInfo()
    return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(1000))


def _class_names(model: nn.Module, num_classes: int) -> list[str]:
    """Name i is timm's label name of output i: ``label_names`` is a list (name i at place i) or a dict
    {number: name} (JSON keys are strings, in any order; "class i" where it has none); without them,
    ImageNet's names for 1000 classes, else "class i"."""
    label_names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if isinstance(label_names, dict) and label_names:
        names = {int(key): str(name) for key, name in label_names.items() if str(key).isdecimal()}
        return [names.get(index, f"class {index}") for index in range(num_classes)]
    if label_names and len(label_names) == num_classes:
        return list(label_names)
    if num_classes == 1000:
        return list(imagenet_class_names())
    return [f"class {index}" for index in range(num_classes)]


def _frozen(model: nn.Module) -> nn.Module:
    return model.requires_grad_(False).eval()


def _with_target_layer(
    name: str,
    model: nn.Module,
    preprocessing: Preprocessing,
    class_names: list[str],
    target_layer: str | None,
    family: nn.Module | None = None,
) -> Backbone:
    """A Backbone whose CAM layer is ``target_layer``, the family's declared one, or the probe's
    (``ptame.loading.target_layers.find_target_layer``), with the reshape its output's layout needs."""
    try:
        found = find_target_layer(model, preprocessing.crop, target_layer, family)
    except ValueError as error:
        raise ValueError(f"the classifier {name}: {error}") from error
    except Exception as error:  # noqa: BLE001 - whatever the network raises on the probe image is a ptame error
        raise CheckpointError(
            f"the classifier {describe(name)} fails on a {preprocessing.crop}-pixel probe image: "
            f"{type(error).__name__}: {error}"
        ) from error
    return Backbone(
        name=name,
        model=model,
        preprocessing=preprocessing,
        target_layer=found.module,
        reshape_transform=found.layout.reshape_transform(),
        class_names=class_names,
        target_layer_name=found.name,
    )


def _transformers_folder(name: str, files: NetworkFiles) -> Path | None:
    """The local folder of an "hf-hub:" or "local-dir:" classifier if it is a transformers model, else None."""
    if files.folder is None or not is_transformers_config(read_json_object(files.folder / CONFIG_NAME)):
        return None
    return transformers_folder(files, f"the classifier {describe(name)}")


def _transformers_backbone(name: str, folder: Path, target_layer: str | None) -> Backbone:
    built = load_transformers_classifier(folder, f"the classifier {describe(name)}")
    network = _frozen(built.model)
    preprocessing = Preprocessing(built.resize, built.crop, built.mean, built.std, built.interpolation)
    model = _frozen(LogitsOnly(network))
    return _with_target_layer(name, model, preprocessing, built.class_names, target_layer, family=network)


def _timm_backbone(
    name: str,
    pretrained: bool,
    preprocessing: Preprocessing | None = None,
    local_files_only: bool = False,
    target_layer: str | None = None,
    files: NetworkFiles | None = None,
) -> Backbone:
    files = files or locate_network(name, pretrained, SourceFolder(Path.cwd(), local_files_only=local_files_only))
    model = _frozen(create_network(files, f"the classifier {describe(name)}"))
    preprocessing = preprocessing or Preprocessing.from_timm(model)
    return _with_target_layer(name, model, preprocessing, _class_names(model, model.num_classes), target_layer)


def _vgg16(pretrained: bool, local_files_only: bool, target_layer: str | None) -> Backbone:
    # The last ReLU of conv5_3 (14x14 at 224): the layer of the Grad-CAM paper, before the pool.
    return _timm_backbone(
        "vgg16.tv_in1k", pretrained, PAPER_PREPROCESSING, local_files_only, target_layer or "features.29"
    )


def _resnet50(pretrained: bool, local_files_only: bool, target_layer: str | None) -> Backbone:
    return _timm_backbone("resnet50.tv_in1k", pretrained, PAPER_PREPROCESSING, local_files_only, target_layer)


def _vit_b_16(pretrained: bool, local_files_only: bool, target_layer: str | None) -> Backbone:
    """torchvision's ViT-B/16 (its weights come from torchvision's own download, cached by torch.hub)."""
    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1 if pretrained else None
    model = _frozen(torchvision.models.vit_b_16(weights=weights))
    names = list(imagenet_class_names())
    return _with_target_layer("vit_b_16", model, PAPER_PREPROCESSING, names, target_layer or "encoder.layers.-1.ln_1")


@dataclass(frozen=True)
class PaperBackbone:
    """One of the P-TAME paper's classifiers and everything the project knows of it.

    build: (pretrained, local_files_only, target_layer) -> the backbone. display_name: its name in
    the app and the model cards. weights: the exact weights its explainer is trained for.
    weight_decay, loss: the paper's recipe of its explainer (``train/recipes.py`` adds the shared
    schedule). overhead_target: the most that explaining its top-1 class may cost, as a ratio to a
    bare forward pass (``python -m ptame.bench.overhead``).
    """

    build: Callable[[bool, bool, str | None], Backbone]
    display_name: str
    weights: str
    weight_decay: float
    loss: LossWeights
    overhead_target: float


# The paper's classifiers, with the exact weights their explainers are trained for: timm's
# vgg16.tv_in1k and resnet50.tv_in1k hold torchvision's IMAGENET1K_V1 tensors; no timm tag holds
# torchvision's ViT-B/16 weights, so that one comes from torchvision. Recipes: Table "Recipe of the
# paper" of shared/docs/ptame-method.md.
PAPER_BACKBONES: dict[str, PaperBackbone] = {
    "vgg16": PaperBackbone(
        _vgg16,
        "VGG-16",
        "torchvision VGG16_Weights.IMAGENET1K_V1 (timm vgg16.tv_in1k)",
        weight_decay=0.13324,
        loss=LossWeights(ce=0.07278, area=0.977712, smooth=0.0001),
        overhead_target=1.15,
    ),
    "resnet50": PaperBackbone(
        _resnet50,
        "ResNet-50",
        "torchvision ResNet50_Weights.IMAGENET1K_V1 (timm resnet50.tv_in1k)",
        weight_decay=0.000242666,
        loss=LossWeights(ce=0.161429, area=0.838571, smooth=0.0),
        overhead_target=1.5,
    ),
    "vit_b_16": PaperBackbone(
        _vit_b_16,
        "ViT-B/16",
        "torchvision ViT_B_16_Weights.IMAGENET1K_V1",
        weight_decay=0.000133090,
        loss=LossWeights(ce=0.131292, area=0.838571, smooth=0.0, border=0.0, area_power=0.5),
        overhead_target=1.15,
    ),
}


# "MODULE:FUNCTION": an importable module (dots allowed) and a function in it. A timm name never
# has a colon; "hf-hub:ORG/NAME" has a slash and "local-dir:PATH" a hyphen before its colon.
USER_FUNCTION = re.compile(r"(?P<module>[A-Za-z_][\w.]*):(?P<function>[A-Za-z_]\w*)")


class LogitsOnly(nn.Module):
    """A classifier whose forward returns an output object (``.logits``, as Hugging Face
    transformers models do), as a module returning the (B, K) logits tensor."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        output = self.network(pixels)
        return output if isinstance(output, torch.Tensor) else output.logits


def _user_backbone(spec: str, target_layer: str | None) -> Backbone:
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
    network = _frozen(model)
    with torch.no_grad():
        probe = torch.zeros(1, 3, preprocessing.crop, preprocessing.crop, device=next(network.parameters()).device)
        output = network(probe)
    if not isinstance(output, torch.Tensor) and not isinstance(getattr(output, "logits", None), torch.Tensor):
        raise ValueError(
            f"{spec}'s model returns {type(output).__name__}: it must return the (B, K) logits or an "
            "object with a .logits tensor"
        )
    model = network if isinstance(output, torch.Tensor) else LogitsOnly(network)
    num_classes = (output if isinstance(output, torch.Tensor) else output.logits).shape[-1]
    names = _class_names(network, num_classes)
    return _with_target_layer(spec, model, preprocessing, names, target_layer, family=network)


def create_backbone(
    name: str, pretrained: bool = True, local_files_only: bool = False, target_layer: str | None = None
) -> Backbone:
    """Build a classifier by name.

    Args:
        name: "vgg16", "resnet50", "vit_b_16" (the paper's), any timm model name, including
            "hf-hub:org/name[@revision]" and "local-dir:PATH" (a timm folder, or a Hugging Face
            transformers one: config.json with a model_type, loaded with
            AutoModelForImageClassification; needs the transformers extra), or
            "MODULE:FUNCTION": a function of an importable module, called without arguments,
            that returns a ``Backbone`` or ``(model, Preprocessing)``; with the latter the class
            count comes from one forward pass (a model returning an object with ``.logits`` is
            wrapped), the class names from ``model.pretrained_cfg["label_names"]`` if present.
        pretrained: load the weights (False: random initialisation, builds offline); a user's
            function builds its model as it likes; a transformers folder always loads its own.
        local_files_only: read local folders and the local Hugging Face cache only (offline),
            for this call alone.
        target_layer: the layer Grad-CAM-style methods read, a dotted module path of the model
            ("layer4", "blocks.-1.norm1"; a transformers or wrapped model: of the inner model);
            None: the family's declared layer, else the probe's (``ptame.loading.target_layers``). Its
            output's layout (channels first or last, tokens) is read from a probe image.

    Returns:
        The backbone, frozen, in eval mode, on the CPU.

    Raises:
        ValueError: a "MODULE:FUNCTION" that cannot be imported or returns something else.
        CheckpointError: a timm name, Hub repo or folder that cannot be used: unknown, missing
            files (weights are read from safetensors only), a config over the size its weights
            hold (``ptame.loading.timm_sources``), "hf-hub:" with anything but a Hub repo
            ORG/NAME (``ptame.loading.network_names``), a transformers config that asks to run
            code of its own (``ptame.loading.hf_transformers.refuse_code``).
    """
    paper = PAPER_BACKBONES.get(name)
    if paper is not None:
        return paper.build(pretrained, local_files_only, target_layer)
    if USER_FUNCTION.fullmatch(name):
        return _user_backbone(name, target_layer)
    files = locate_network(name, pretrained, SourceFolder(Path.cwd(), local_files_only=local_files_only))
    folder = _transformers_folder(name, files)
    if folder is not None:
        return _transformers_backbone(name, folder, target_layer)
    return _timm_backbone(name, pretrained, local_files_only=local_files_only, target_layer=target_layer, files=files)
