"""Hugging Face transformers image classifiers (ViT, DeiT, BEiT, Swin, ConvNeXt, ResNet, ...): found,
checked and built as ptame classifiers.

A transformers folder or Hub repo has a config.json with "model_type" / "architectures" (timm's
has "architecture"), model.safetensors, and usually preprocessor_config.json. The model is built
with ``AutoModelForImageClassification`` within the budget of its weights file (``ptame.loading.budget``),
from safetensors only, offline when asked; its preprocessing comes from the image processor's
config (size, crop, resample, mean, std) and its class names from ``id2label``. transformers is
an optional dependency: ``pip install "ptame-xai[transformers]"``.

No code from a model's files ever runs: a config.json with an ``auto_map`` (at any depth), or a
``model_type`` that the installed transformers does not ship, is refused before transformers
reads the folder, and every transformers call passes ``trust_remote_code=False`` (so it never
asks on standard input, and never touches the process's SIGALRM).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ptame.errors import CheckpointError, describe
from ptame.loading.budget import build_within_budget, weights_budget
from ptame.loading.config_bounds import (
    check_config_sizes,
    check_transformers_config,
    crop_pct,
    input_side,
    mean_and_std,
)
from ptame.loading.network_names import NetworkFiles
from ptame.loading.untrusted import read_json_object, read_safetensors_header
from ptame.perturb import IMAGENET_MEAN, IMAGENET_STD

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PROCESSOR_NAME = "preprocessor_config.json"
EXTRA = 'pip install "ptame-xai[transformers]" (or: pip install transformers)'
PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes as image processors store them
MAX_MODULES_PER_TENSOR = 10


def is_transformers_config(config: dict[str, object]) -> bool:
    """Whether a config.json is a transformers model's (it names a model_type or architectures,
    not a timm architecture)."""
    return "architecture" not in config and ("model_type" in config or "architectures" in config)


@dataclass(frozen=True)
class TransformersClassifier:
    """A built transformers classifier: the model (in eval mode), how its images are prepared,
    and its class names in index order.

    resize: the shorter side before the centre crop; crop: the crop's side; mean, std: its
    normalisation; interpolation: "bilinear" or "bicubic".
    """

    model: nn.Module
    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    class_names: list[str]


def _side(value: object, key: str, where: Path) -> int:
    """A size entry of an image processor's config: an int, or {"height", "width"} / {"shortest_edge"}."""
    if isinstance(value, dict):
        value = value.get("shortest_edge", value.get("height"))
    return input_side(value, key, where)


def _preprocessing(processor: dict[str, object], config: dict[str, object], where: Path) -> dict[str, object]:
    """resize, crop, mean, std and interpolation from an image processor's config, every value
    bounded (``ptame.loading.config_bounds``). A "size" of one int is the shortest edge, as
    transformers reads the legacy form; with a crop_pct, the image is resized to size / crop_pct
    and cropped to size (ConvNeXt's processor)."""
    check_config_sizes(processor, where)
    entry = processor.get("size", config.get("image_size", 224))
    size = _side(entry, "size", where)
    crop = size
    if processor.get("do_center_crop") and processor.get("crop_size") is not None:
        crop = _side(processor["crop_size"], "crop_size", where)
    resize = size
    shortest_edge = isinstance(entry, int) or (isinstance(entry, dict) and "shortest_edge" in entry)
    if processor.get("crop_pct") is not None and shortest_edge:
        resize, crop = int(math.floor(size / crop_pct(processor["crop_pct"], "crop_pct", where))), size
    mean, std = mean_and_std(
        processor.get("image_mean", IMAGENET_MEAN), processor.get("image_std", IMAGENET_STD), where
    )
    interpolation = PIL_RESAMPLE.get(processor.get("resample"), "bilinear")  # type: ignore[arg-type]
    return {"resize": max(resize, crop), "crop": crop, "mean": mean, "std": std, "interpolation": interpolation}


def refuse_code(config: dict[str, object], what: str) -> None:
    """Refuse a transformers config.json that asks for code: an ``auto_map`` anywhere in it, or a
    ``model_type`` the installed transformers does not ship (only the folder's own code could
    build it).

    Raises:
        CheckpointError: names ``what`` and the reason; transformers is not asked.
    """
    from transformers import CONFIG_MAPPING

    stack: list[object] = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "auto_map" in item:
                raise CheckpointError(
                    f"{what} asks to run Python code of its own (its config.json has an auto_map); "
                    "ptame never runs code from a model's files"
                )
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise CheckpointError(
            f"{what} has the model_type {describe(model_type, 60)}, which is not one of the model types "
            "transformers ships; ptame builds those only and never runs code from a model's files"
        )


def _class_names(config: dict[str, object], num_classes: int) -> list[str]:
    """Name i is the ``id2label`` entry numbered i (its JSON keys are the numbers as strings, in any
    order, as transformers reads them), or "class i" where it has none."""
    labels = config.get("id2label")
    names: dict[int, str] = {}
    if isinstance(labels, dict):
        names = {int(key): str(name) for key, name in labels.items() if str(key).isdecimal()}
    return [names.get(index, f"class {index}") for index in range(num_classes)]


def load_transformers_classifier(folder: Path, what: str) -> TransformersClassifier:
    """Build the transformers classifier of a local folder (a Hub snapshot) from its safetensors.

    Raises:
        CheckpointError: transformers not installed (names the extra), no model.safetensors, a
            config transformers cannot use, a model over the budget of its weights, or an image
            processor config out of bounds.
    """
    try:
        from transformers import AutoConfig, AutoModelForImageClassification
    except ImportError as error:
        raise CheckpointError(f"{what} is a Hugging Face transformers model: {EXTRA}") from error
    config = read_json_object(folder / CONFIG_NAME)
    refuse_code(config, what)
    check_transformers_config(config, folder / CONFIG_NAME)
    processor_path = folder / PROCESSOR_NAME
    processor = read_json_object(processor_path) if processor_path.is_file() else {}
    preprocessing = _preprocessing(processor, config, processor_path)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{what} has no {WEIGHTS_NAME} (weights are read from safetensors only)")
    header = read_safetensors_header(weights)
    try:
        architecture = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        model = build_within_budget(
            lambda: AutoModelForImageClassification.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
            ),
            weights_budget(header),
            MAX_MODULES_PER_TENSOR * len(header.tensors) + 1000,
            what,
            architecture=lambda: AutoModelForImageClassification.from_config(
                architecture, trust_remote_code=False, dtype=torch.float32
            ),
            input_side=lambda model: preprocessing["crop"],
        )
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - transformers raises many types for configs it cannot use
        raise CheckpointError(f"cannot build {what}: {type(error).__name__}: {error}") from error
    num_classes = int(getattr(model.config, "num_labels", 0) or len(config.get("id2label") or {}))
    return TransformersClassifier(
        model=model.eval(),
        **preprocessing,  # type: ignore[arg-type]
        class_names=_class_names(config, num_classes),
    )


def transformers_folder(files: NetworkFiles, what: str) -> Path:
    """The folder of a located transformers model (``files.folder``): for a Hub repo, its weights
    and image processor config are fetched into the same snapshot first.

    Raises:
        CheckpointError: no model.safetensors beside its config.json (names ``what``).
    """
    if files.companion(WEIGHTS_NAME) is None:
        raise CheckpointError(f"{what} has no {WEIGHTS_NAME} (weights are read from safetensors only)")
    files.companion(PROCESSOR_NAME)  # absent: the defaults
    return files.folder
