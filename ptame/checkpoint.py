"""An explainer checkpoint's two files, read and checked: config.json and the head's model.safetensors.

The nn.Module (``ptame.explainer.PTAME``) describes itself; these functions find its files (a
folder or a Hub repo, through ``ptame.hub``), read them, and refuse anything that does not fit
it exactly, with a ``CheckpointError`` that names the file and the mismatch. Weights are only
ever read from safetensors.
"""

import json
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ptame.errors import CheckpointError
from ptame.hub import resolve_file

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


def read_config(path: Path, allowed_keys: Collection[str]) -> dict[str, object]:
    """The JSON object of a config.json whose keys are all among ``allowed_keys``.

    Raises:
        CheckpointError: not JSON, not an object, or unknown keys.
    """
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(config).__name__}")
    unknown = sorted(set(config) - set(allowed_keys))
    if unknown:
        raise CheckpointError(f"{path} has unknown keys {unknown}: not a P-TAME explainer config?")
    return config


def write_head_weights(path: Path, tensors: Mapping[str, torch.Tensor], identity: Mapping[str, str]) -> None:
    """Write a head's tensors to safetensors, with the explainer's identity (and the format) as metadata."""
    contiguous = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
    save_file(contiguous, str(path), metadata={"format": WEIGHTS_FORMAT, **identity})


def read_head_weights(
    path: Path,
    identity: Mapping[str, str],
    expected: Mapping[str, torch.Tensor],
    map_location: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """A head's tensors from a safetensors file, checked against the head that will hold them.

    Args:
        path: the model.safetensors file.
        identity: the explainer's identity (``PTAME.identity()``); the file's metadata must agree.
        expected: the head's state dict: the same tensor names and shapes are required.
        map_location: device of the returned tensors.

    Raises:
        CheckpointError: unreadable file, non-finite values, another auxiliary network, missing or
            unexpected tensors, or different shapes (e.g. class counts).
    """
    try:
        tensors = load_file(str(path), device=str(map_location))
        with open(path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            metadata = json.loads(handle.read(header_size)).get("__metadata__", {}) or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupted?): {error}"
        ) from error
    for key in IDENTITY_KEYS:
        if key in metadata and metadata[key] != identity[key]:
            raise CheckpointError(
                f"{path} was trained for {key} = {metadata[key]}, but this explainer has {key} = {identity[key]}"
            )
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the head: missing tensors {missing}, unexpected tensors {unexpected}"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{path}: tensor {key} has shape {tuple(value.shape)}, the head expects "
                f"{tuple(expected[key].shape)} (class count or auxiliary channels differ)"
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: tensor {key} holds NaN or infinite values (corrupted?)")
    return tensors
