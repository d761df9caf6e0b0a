"""timm networks named by a config that may come from anyone: found, checked, then built.

A name is a timm registry name ("resnet18.tv_in1k"), "hf-hub:ORG/NAME[@REVISION]" (a Hub repo
holding timm's config.json and model.safetensors) or "local-dir:PATH" (a folder holding them).
Files are found through ``ptame.loading.hub``, offline per call when asked (``local_files_only``), and
weights only ever come from safetensors. A folder's config.json is read within bounds and its
architecture must be one timm knows; the network is then built within a budget taken from its
weights file's header (``ptame.loading.budget``), so that a config cannot ask for more memory than its
weights hold. Where "local-dir:" paths may lead is the caller's ``SourceFolder``: a Hub repo's
paths stay inside that repo.
"""

import posixpath
from dataclasses import dataclass
from pathlib import Path

import timm
from torch import nn

from ptame.errors import CheckpointError, describe
from ptame.loading.budget import build_within_budget, weights_budget
from ptame.loading.config_bounds import check_timm_config
from ptame.loading.hub import resolve_file
from ptame.loading.untrusted import read_json_object, read_safetensors_header

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MAX_NAME_CHARS = 512  # a network's name or path in a config
MAX_MODULES_PER_TENSOR = 10  # a network's modules, per tensor of its weights file (activations, pools...)
MAX_MODULES_WITHOUT_WEIGHTS = 20_000  # a network built without a weights file


@dataclass(frozen=True)
class SourceFolder:
    """Where the config that names a network came from, for its relative "local-dir:" paths.

    path: the folder holding that config (for a Hub repo: its snapshot in the local cache).
    hub_repo, revision: the Hub repo and revision the folder is a snapshot of; its "local-dir:"
        paths must be relative and stay inside the repo, and their files are fetched from it.
        None: a local folder, whose paths are its owner's (absolute ones too).
    local_files_only: read local folders and the local Hugging Face cache only (offline).
    """

    path: Path
    hub_repo: str | None = None
    revision: str | None = None
    local_files_only: bool = False


@dataclass(frozen=True)
class NetworkFiles:
    """A network's name for ``timm.create_model``, and where its weights come from.

    name: a timm registry name, or "local-dir:ABSOLUTE-FOLDER".
    pretrained: whether its weights are loaded.
    weights: its model.safetensors; None when no weights are loaded, or when timm fetches a
        registry model's weights from a URL of its own (a model with no Hub copy).
    """

    name: str
    pretrained: bool
    weights: Path | None


def _confined_subfolder(path_text: str, source: SourceFolder) -> str:
    """A Hub repo's "local-dir:" path as a subfolder of that repo, or a CheckpointError."""
    normal = posixpath.normpath(path_text.replace("\\", "/"))
    if path_text.startswith(("/", "~")) or normal == ".." or normal.startswith("../") or ":" in normal:
        raise CheckpointError(
            f"the Hub repo {source.hub_repo} names the network local-dir:{describe(path_text)}, outside its own "
            "files: a Hub explainer's auxiliary network must be a Hub name or a folder of its own repo"
        )
    return "" if normal == "." else normal


def _folder_files(folder: Path, pretrained: bool) -> NetworkFiles:
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(f"the network folder {folder} has no {CONFIG_NAME}")
    weights = folder / WEIGHTS_NAME
    if pretrained and not weights.is_file():
        raise CheckpointError(f"the network folder {folder} has no {WEIGHTS_NAME} (weights are read from safetensors only)")
    return NetworkFiles(LOCAL_DIR_PREFIX + str(folder), pretrained, weights if pretrained else None)


def _hub_files(repo: str, revision: str | None, subfolder: str, pretrained: bool, local_files_only: bool) -> NetworkFiles:
    prefix = f"{subfolder}/" if subfolder else ""
    config = resolve_file(repo, prefix + CONFIG_NAME, revision=revision, local_files_only=local_files_only)
    weights = None
    if pretrained:
        weights = resolve_file(repo, prefix + WEIGHTS_NAME, revision=revision, local_files_only=local_files_only)
        if weights.parent != config.parent:
            raise CheckpointError(f"the Hub repo {repo}'s {CONFIG_NAME} and {WEIGHTS_NAME} are not in one snapshot")
    return NetworkFiles(LOCAL_DIR_PREFIX + str(config.parent), pretrained, weights)


def _registry_files(name: str, pretrained: bool, local_files_only: bool) -> NetworkFiles:
    if not timm.is_model(name):
        raise CheckpointError(f"timm has no model named {describe(name)}")
    try:
        config = timm.models.get_pretrained_cfg(name) if pretrained else None
    except RuntimeError as error:  # an unknown pretrained tag
        raise CheckpointError(f"timm has no weights {describe(name)}: {error}") from error
    if config is None or not config.hf_hub_id:
        return NetworkFiles(name, pretrained, None)
    weights = resolve_file(config.hf_hub_id, WEIGHTS_NAME, local_files_only=local_files_only)
    return NetworkFiles(name, True, weights)


def locate_network(name: object, pretrained: bool, source: SourceFolder | None = None) -> NetworkFiles:
    """The files of the network ``name`` (see the module's docstring), downloaded if needed.

    Args:
        name: a timm registry name, "hf-hub:ORG/NAME[@REVISION]" or "local-dir:PATH".
        pretrained: whether its weights are wanted.
        source: where the config naming it came from (relative paths start there); None: the
            working directory, online.

    Raises:
        CheckpointError: an unknown or malformed name, a path outside a Hub repo, missing files.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise CheckpointError(
            f"a network name must be a string of 1 to {MAX_NAME_CHARS} characters, got {describe(name)}"
        )
    local_files_only = source.local_files_only if source else False
    if name.startswith(HF_HUB_PREFIX):
        repo, _, revision = name[len(HF_HUB_PREFIX) :].partition("@")
        return _hub_files(repo, revision or None, "", pretrained, local_files_only)
    if name.startswith(LOCAL_DIR_PREFIX):
        path_text = name[len(LOCAL_DIR_PREFIX) :]
        if source is not None and source.hub_repo is not None:
            subfolder = _confined_subfolder(path_text, source)
            return _hub_files(source.hub_repo, source.revision, subfolder, pretrained, local_files_only)
        path = Path(path_text).expanduser()
        if source is not None and not path.is_absolute():
            path = source.path / path
        return _folder_files(path.resolve(), pretrained)
    return _registry_files(name, pretrained, local_files_only)


def _check_folder_config(folder: Path) -> None:
    """A timm folder's config.json, read within bounds, must name an architecture timm knows, and
    its values must be within ``ptame.loading.config_bounds``'."""
    config = read_json_object(folder / CONFIG_NAME)
    architecture = config.get("architecture")
    if not isinstance(architecture, str) or not timm.is_model(architecture):
        raise CheckpointError(
            f"{folder / CONFIG_NAME} names the architecture {describe(architecture, 60)}, "
            "which is not a timm model (is it a timm folder?)"
        )
    if not isinstance(config.get("model_args", {}), dict) or not isinstance(config.get("pretrained_cfg", {}), dict):
        raise CheckpointError(f"{folder / CONFIG_NAME}: model_args and pretrained_cfg must be JSON objects")
    check_timm_config(config, folder / CONFIG_NAME)


def _input_side(model: nn.Module) -> int:
    """The side of the images a timm network declares (its pretrained config's input_size)."""
    return int(timm.data.resolve_data_config({}, model=model)["input_size"][-1])


def create_network(
    files: NetworkFiles, what: str, input_side: int | None = None, **timm_options: object
) -> nn.Module:
    """``timm.create_model`` of located files, its weights (if any) loaded from their safetensors.

    The budget (``ptame.loading.budget``): the bytes its weights file pays for
    (``weights_budget``), MAX_MODULES_PER_TENSOR modules per tensor of it, and the activations
    of one image of ``input_side`` pixels.

    Args:
        files: from ``locate_network``.
        what: names the network in errors ("the auxiliary network of ...").
        input_side: the side of the images it will see; None: the one its config declares.
        timm_options: passed to ``timm.create_model`` (features_only, out_indices, num_classes...).

    Raises:
        CheckpointError: a config that timm cannot use, a network over its budget, or weights
            that do not fit it.
    """
    if files.name.startswith(LOCAL_DIR_PREFIX):
        _check_folder_config(Path(files.name[len(LOCAL_DIR_PREFIX) :]))
    header, max_modules = None, MAX_MODULES_WITHOUT_WEIGHTS
    overlay = {}
    if files.weights is not None:
        header = read_safetensors_header(files.weights)
        max_modules = MAX_MODULES_PER_TENSOR * len(header.tensors) + 1000
        if not files.name.startswith(LOCAL_DIR_PREFIX):
            overlay = {"pretrained_cfg_overlay": {"file": str(files.weights)}}
    def build(pretrained: bool) -> nn.Module:
        return timm.create_model(files.name, pretrained=pretrained, **(overlay if pretrained else {}), **timm_options)

    try:
        return build_within_budget(
            lambda: build(files.pretrained),
            weights_budget(header),
            max_modules,
            what,
            architecture=lambda: build(False),
            input_side=lambda model: input_side or _input_side(model),
        )
    except CheckpointError:
        raise
    except Exception as error:  # timm raises many types for a config or weights it cannot use
        raise CheckpointError(f"cannot build {what}: {type(error).__name__}: {error}") from error
