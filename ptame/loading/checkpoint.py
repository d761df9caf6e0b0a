"""An explainer checkpoint's two files, read and checked: config.json and the head's model.safetensors.

The nn.Module (``ptame.explainer.PTAME``) describes itself; these functions find its files (a
folder or a Hub repo, through ``ptame.loading.hub``), read them, and refuse anything that does not fit
it exactly, with a ``CheckpointError`` that names the file and the mismatch. Weights are only
ever read from safetensors.
"""

import math
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ptame.errors import CheckpointError, describe, shorten
from ptame.head import AttentionHead
from ptame.loading.hub import resolve_file
from ptame.loading.untrusted import read_json_object, read_safetensors_header

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_FORMAT = "ptame-head-v1"  # the "format" entry of the weights' metadata
IDENTITY_KEYS = ("auxiliary", "feature_levels", "channels", "num_classes")  # checked against the metadata


def checkpoint_files(source: str | Path, **hub_options: object) -> tuple[Path, Path]:
    """The local paths of a checkpoint's config.json and model.safetensors.

    Args:
        source: a folder or a Hub repo id.
        hub_options: revision, cache_dir, force_download, token, local_files_only (``resolve_file``).

    Raises:
        CheckpointError: a file is missing, or the Hub cannot give it.
    """
    return resolve_file(source, CONFIG_NAME, **hub_options), resolve_file(source, WEIGHTS_NAME, **hub_options)


MAX_CLASSES = 100_000  # ImageNet-21k's 21,843 fit
MAX_LEVELS = 8
MAX_LEVEL_INDEX = 64  # timm out_indices: stages of a CNN, blocks of a transformer
MAX_CLASS_NAME_CHARS = 200
MAX_TRAINED_IMAGES = 10**12  # a class's training images (config.json's trained_images)
MIN_AUXILIARY_SIZE, MAX_AUXILIARY_SIZE = 16, 2048  # pixels: the auxiliary network's input side
MAX_HEAD_ELEMENTS = 200_000_000  # 800 MB of float32
LEVEL_KEY = re.compile(r"levels\.(\d{1,4})\.")  # a head tensor's feature level


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_config_values(config: dict[str, object], path: Path) -> None:
    """The values of an explainer's config.json: types and bounds (see ``read_config``)."""

    def refuse(key: str, rule: str) -> CheckpointError:
        return CheckpointError(f"{path}: {key} must be {rule}, got {describe(config[key])}")

    if "num_classes" in config and not (_is_int(config["num_classes"]) and 1 <= config["num_classes"] <= MAX_CLASSES):
        raise refuse("num_classes", f"an integer from 1 to {MAX_CLASSES}")
    if "auxiliary" in config and not (isinstance(config["auxiliary"], str) and 0 < len(config["auxiliary"]) <= 512):
        raise refuse("auxiliary", "a network name of 1 to 512 characters")
    levels = config.get("feature_levels", [])
    if not (
        isinstance(levels, list)
        and 1 <= len(levels) <= MAX_LEVELS
        and all(_is_int(level) and abs(level) <= MAX_LEVEL_INDEX for level in levels)
        and len(set(levels)) == len(levels)
    ):
        raise refuse("feature_levels", f"a list of 1 to {MAX_LEVELS} distinct integers within ±{MAX_LEVEL_INDEX}")
    for key, positive in (("auxiliary_mean", False), ("auxiliary_std", True)):
        values = config.get(key)
        if values is not None and not (
            isinstance(values, list)
            and len(values) == 3
            and all(_is_number(value) and (value > 0 if positive else True) for value in values)
        ):
            rule = "positive finite numbers" if positive else "finite numbers"
            raise refuse(key, f"null or a list of 3 {rule} (one per RGB channel)")
    if "pretrained_auxiliary" in config and not isinstance(config["pretrained_auxiliary"], bool):
        raise refuse("pretrained_auxiliary", "true or false")
    size = config.get("auxiliary_size")
    if size is not None and not (_is_int(size) and MIN_AUXILIARY_SIZE <= size <= MAX_AUXILIARY_SIZE):
        raise refuse("auxiliary_size", f"null or an integer from {MIN_AUXILIARY_SIZE} to {MAX_AUXILIARY_SIZE} (pixels)")
    names = config.get("class_names")
    if names is not None and not (
        isinstance(names, list)
        and len(names) <= MAX_CLASSES
        and all(isinstance(name, str) and len(name) <= MAX_CLASS_NAME_CHARS for name in names)
    ):
        raise refuse("class_names", f"null or a list of strings of at most {MAX_CLASS_NAME_CHARS} characters")
    if names is not None and len(names) != config.get("num_classes", len(names)):
        raise refuse("class_names", f"null or one name per class ({config['num_classes']})")
    counts = config.get("trained_images")
    if counts is not None and not (
        isinstance(counts, list)
        and len(counts) == config.get("num_classes", 1000)
        and all(_is_int(count) and 0 <= count <= MAX_TRAINED_IMAGES for count in counts)
    ):
        raise refuse("trained_images", f"null or one integer from 0 to {MAX_TRAINED_IMAGES} per class")


def read_config(path: Path, allowed_keys: Collection[str]) -> dict[str, object]:
    """An explainer's config.json: a JSON object (read within ``ptame.loading.untrusted``'s bounds) whose
    keys are all among ``allowed_keys`` and whose values have the types and bounds of a P-TAME
    explainer: num_classes an integer in [1, MAX_CLASSES]; auxiliary a name of at most 512
    characters; feature_levels 1 to MAX_LEVELS distinct integers; auxiliary_mean / auxiliary_std
    null or 3 finite numbers (std > 0); pretrained_auxiliary a boolean; auxiliary_size null or
    an integer from MIN_AUXILIARY_SIZE to MAX_AUXILIARY_SIZE; class_names null or
    strings of at most MAX_CLASS_NAME_CHARS characters; trained_images null or one integer from 0
    to MAX_TRAINED_IMAGES per class. Nothing is built.

    Raises:
        CheckpointError: too large, not JSON (or repeated keys, NaN, too deeply nested), not an
            object, unknown keys, or a value of the wrong type or out of bounds; names the file.
    """
    config = read_json_object(Path(path))
    unknown = sorted(set(config) - set(allowed_keys))
    if unknown:
        raise CheckpointError(f"{path} has unknown keys {describe(unknown, 200)}: not a P-TAME explainer config?")
    _check_config_values(config, Path(path))
    return config


def _head_layout(channels: Sequence[int], num_classes: int) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the head's tensors, from a head built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        head = AttentionHead(channels, num_classes)
    return {name: tuple(tensor.shape) for name, tensor in head.state_dict().items()}


def read_head_header(path: Path, num_classes: int, feature_levels: Sequence[int] | None) -> tuple[int, ...]:
    """Check a head's weights file against its config from the file's header alone, before
    anything is built, and return the head's channels per level.

    Args:
        path: the model.safetensors file.
        num_classes: the class count config.json gives.
        feature_levels: the levels config.json gives to a named auxiliary network; None for a
            custom one (its levels are whatever it returns).

    Returns:
        The channels c_l of each feature level (the auxiliary network must give these).

    Raises:
        CheckpointError: an unreadable header, a head of another class count or level count,
            missing, unexpected or misshapen tensors, integer weights, or over MAX_HEAD_ELEMENTS.
    """
    header = read_safetensors_header(path)
    if header.numel > MAX_HEAD_ELEMENTS:
        raise CheckpointError(f"{path} holds {header.numel:,} elements, over the {MAX_HEAD_ELEMENTS:,} of a head")
    found = [LEVEL_KEY.match(name) for name in header.tensors]
    levels = 1 + max((int(match[1]) for match in found if match), default=-1)
    if not 1 <= levels <= MAX_LEVELS:
        raise CheckpointError(f"{path} holds no head of 1 to {MAX_LEVELS} feature levels")
    if feature_levels is not None and levels != len(feature_levels):
        raise CheckpointError(
            f"{path} holds a head of {levels} feature levels, its config.json's feature_levels name {len(feature_levels)}"
        )
    identity = {"num_classes": str(num_classes)}
    if feature_levels is not None:
        identity["feature_levels"] = ",".join(map(str, feature_levels))
    for key, value in identity.items():
        if key in header.metadata and header.metadata[key] != value:
            raise CheckpointError(
                f"{path} was trained for {key} = {shorten(header.metadata[key], 200)}, but this explainer has "
                f"{key} = {value}"
            )
    channels = []
    for level in range(levels):
        sizes = [info.shape[0] for name, info in header.tensors.items() if name.startswith(f"levels.{level}.") and info.shape]
        if not sizes:
            raise CheckpointError(f"{path} has no tensor of feature level {level} (missing tensors levels.{level}.*)")
        channels.append(sizes[0])
    layout = _head_layout(channels, num_classes)
    missing, unexpected = sorted(set(layout) - set(header.tensors)), sorted(set(header.tensors) - set(layout))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the head its config describes: missing tensors {describe(missing, 200)}, "
            f"unexpected tensors {describe(unexpected, 200)}"
        )
    for name, shape in layout.items():
        info = header.tensors[name]
        if info.shape != shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {info.shape}, the head of {num_classes} classes "
                f"(config.json) and channels {tuple(channels)} expects {shape}"
            )
        if not info.is_float and not name.endswith("num_batches_tracked"):
            raise CheckpointError(f"{path}: tensor {name} is {info.dtype}; a head's weights are floating point")
    return tuple(channels)


def write_head_weights(path: Path, tensors: Mapping[str, torch.Tensor], identity: Mapping[str, str]) -> None:
    """Write a head's tensors to safetensors, with the explainer's identity (and the format) as metadata."""
    contiguous = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
    save_file(contiguous, str(path), metadata={"format": WEIGHTS_FORMAT, **identity})


def _checked_tensor(path: Path, key: str, value: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """One tensor of a head's file in the head's dtype (the rule in ``read_head_weights``), or a CheckpointError."""
    if value.shape != expected.shape:
        raise CheckpointError(
            f"{path}: tensor {key} has shape {tuple(value.shape)}, the head expects "
            f"{tuple(expected.shape)} (class count or auxiliary channels differ)"
        )
    if value.is_floating_point() != expected.is_floating_point() or value.dtype == torch.bool:
        raise CheckpointError(f"{path}: tensor {key} is {value.dtype}, the head holds {expected.dtype} there")
    value = value.to(expected.dtype)
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise CheckpointError(
            f"{path}: tensor {key} holds NaN or infinite values as {expected.dtype} (corrupted, or too large?)"
        )
    if key.endswith("running_var") and (value < 0).any():
        raise CheckpointError(f"{path}: tensor {key} holds negative variances (corrupted?)")
    return value


def read_head_weights(
    path: Path,
    identity: Mapping[str, str],
    expected: Mapping[str, torch.Tensor],
    map_location: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """A head's tensors from a safetensors file, checked against the head that will hold them.

    The dtype rule: a floating-point tensor of any width (float16, bfloat16, float32, float64) is
    converted to the head's dtype (float32) and must then be finite (a float64 1e300 is not); an
    integer counter (BatchNorm's num_batches_tracked) is converted to the head's int64; any other
    pairing (integer weights, booleans) is refused. BatchNorm variances must not be negative.

    Args:
        path: the model.safetensors file.
        identity: the explainer's identity (``PTAME.identity()``); the file's metadata must agree.
        expected: the head's state dict: the same tensor names and shapes are required.
        map_location: device of the returned tensors.

    Returns:
        The tensors by name, in the dtypes of ``expected``, on ``map_location``.

    Raises:
        CheckpointError: unreadable file, non-finite values (after the conversion), negative
            variances, another auxiliary network, missing or unexpected tensors, or different
            shapes (e.g. class counts).
    """
    metadata = read_safetensors_header(path).metadata
    try:
        tensors = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupted?): {error}") from error
    for key in IDENTITY_KEYS:
        if key in metadata and metadata[key] != identity[key]:
            raise CheckpointError(
                f"{path} was trained for {key} = {shorten(metadata[key], 200)}, but this explainer has "
                f"{key} = {shorten(identity[key], 200)}"
            )
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the head: missing tensors {describe(missing, 200)}, "
            f"unexpected tensors {describe(unexpected, 200)}"
        )
    return {key: _checked_tensor(path, key, value, expected[key]) for key, value in tensors.items()}
