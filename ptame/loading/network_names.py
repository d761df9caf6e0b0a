"""The one rule for where a network named by a config may come from: a name -> its files.

Every network that ptame builds from a name goes through ``locate_network``: a classifier given
to ``create_backbone`` (timm or transformers), and an explainer's auxiliary network. A name is

- a timm registry name ("resnet18.tv_in1k"): its weights come from timm's own Hub copy;
- "hf-hub:ORG/NAME[@REVISION]": a Hub repo, always fetched from the Hub (or its local cache),
  never read as a path, whatever exists on disk (``hf-hub:/srv/models`` and ``hf-hub:../x`` are
  refused by their form, before the disk is looked at);
- "local-dir:PATH": a folder. Where it may lead is the ``SourceFolder`` of the config naming it:
  in a Hub repo, a relative subfolder of that same repo, fetched from it at the same revision;
  in a local folder (the operator's own), any path, relative ones starting at that folder.

So a Hub explainer reaches only its own repo's subfolders and other Hub repos: its messages
depend on its name alone, never on whether a path exists on the server. Weights are only ever
``model.safetensors``; the files are found, not read (``ptame.loading.timm_sources`` and
``ptame.loading.hf_transformers`` build them).
"""

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import timm
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ptame.errors import CheckpointError, describe
from ptame.loading.hub import hub_file

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MAX_NAME_CHARS = 512  # a network's name or path in a config
HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")  # ORG/NAME, nothing else
HUB_REVISION = re.compile(r"[A-Za-z0-9._-]{1,100}(/[A-Za-z0-9._-]{1,100}){0,3}")  # a branch, tag or commit


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
class HubFolder:
    """A folder of a Hub repo at a revision (``subfolder`` "" for its top), fetched file by file."""

    repo: str
    revision: str | None
    subfolder: str
    local_files_only: bool

    def file(self, filename: str) -> Path:
        """The local path of ``filename`` in this folder, fetched from the Hub (or its cache).

        Raises:
            CheckpointError: not in the repo, not cached while offline, or the Hub refused.
        """
        path = f"{self.subfolder}/{filename}" if self.subfolder else filename
        return hub_file(self.repo, path, revision=self.revision, local_files_only=self.local_files_only)


@dataclass(frozen=True)
class NetworkFiles:
    """A network's name for ``timm.create_model``, and where its files come from.

    name: a timm registry name, or "local-dir:ABSOLUTE-FOLDER" (a local folder, or a Hub
        snapshot's folder in the local cache).
    pretrained: whether its weights are loaded.
    weights: its model.safetensors; None when no weights are loaded, or when timm fetches a
        registry model's weights from a URL of its own (a model with no Hub copy).
    folder: the local folder holding its config.json; None for a registry name.
    hub: the Hub folder that ``folder`` is a snapshot of; None for a local folder or a registry name.
    """

    name: str
    pretrained: bool
    weights: Path | None
    folder: Path | None = None
    hub: HubFolder | None = None

    def companion(self, filename: str) -> Path | None:
        """A file beside its config.json (fetched from the same Hub snapshot), or None if there is none.

        Raises:
            CheckpointError: a Hub file in another snapshot than the config's.
        """
        if self.folder is None:
            return None
        if self.hub is None:
            path = self.folder / filename
            return path if path.is_file() else None
        try:
            path = self.hub.file(filename)
        except CheckpointError:
            return None
        if path.parent != self.folder:
            raise CheckpointError(
                f"the Hub repo {self.hub.repo}'s {CONFIG_NAME} and {filename} are not in one snapshot"
            )
        return path


def parse_hub_name(text: str) -> tuple[str, str | None]:
    """The (repo, revision) of "ORG/NAME[@REVISION]", the part of a name after "hf-hub:".

    Raises:
        CheckpointError: anything but a Hub repo id of the form ORG/NAME (a path, "~", "..",
            one part or three) and an optional revision; decided from the text alone.
    """
    repo, at, revision = text.partition("@")
    form = HUB_REPO.fullmatch(repo) and (not at or HUB_REVISION.fullmatch(revision) and ".." not in revision)
    try:
        if form:
            validate_repo_id(repo)
    except HFValidationError:
        form = False
    if not form:
        raise CheckpointError(
            f"{describe(HF_HUB_PREFIX + text)} is not a Hub name: hf-hub: takes a Hub repo ORG/NAME "
            "(letters, digits, '-', '_', '.') and an optional @REVISION, never a path"
        )
    return repo, revision or None


def _confined_subfolder(path_text: str, source: SourceFolder) -> str:
    """A Hub repo's "local-dir:" path as a subfolder of that repo, or a CheckpointError."""
    normal = posixpath.normpath(path_text.replace("\\", "/"))
    outside = path_text.startswith(("/", "~")) or normal == ".." or normal.startswith("../") or ":" in normal
    if outside or not path_text.isprintable():
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
        raise CheckpointError(
            f"the network folder {folder} has no {WEIGHTS_NAME} (weights are read from safetensors only)"
        )
    return NetworkFiles(LOCAL_DIR_PREFIX + str(folder), pretrained, weights if pretrained else None, folder)


def _hub_files(hub: HubFolder, pretrained: bool) -> NetworkFiles:
    config = hub.file(CONFIG_NAME)
    weights = hub.file(WEIGHTS_NAME) if pretrained else None
    if weights is not None and weights.parent != config.parent:
        raise CheckpointError(f"the Hub repo {hub.repo}'s {CONFIG_NAME} and {WEIGHTS_NAME} are not in one snapshot")
    return NetworkFiles(LOCAL_DIR_PREFIX + str(config.parent), pretrained, weights, config.parent, hub)


def _registry_files(name: str, pretrained: bool, local_files_only: bool) -> NetworkFiles:
    if not timm.is_model(name):
        raise CheckpointError(f"timm has no model named {describe(name)}")
    try:
        config = timm.models.get_pretrained_cfg(name) if pretrained else None
    except RuntimeError as error:  # an unknown pretrained tag
        raise CheckpointError(f"timm has no weights {describe(name)}: {error}") from error
    if config is None or not config.hf_hub_id:
        return NetworkFiles(name, pretrained, None)
    weights = hub_file(config.hf_hub_id, WEIGHTS_NAME, local_files_only=local_files_only)
    return NetworkFiles(name, True, weights)


def locate_network(name: object, pretrained: bool, source: SourceFolder | None = None) -> NetworkFiles:
    """The files of the network ``name`` (see the module's docstring), downloaded if needed.

    Args:
        name: a timm registry name, "hf-hub:ORG/NAME[@REVISION]" or "local-dir:PATH".
        pretrained: whether its weights are wanted.
        source: where the config naming it came from (relative paths start there; a Hub repo's
            paths stay inside it); None: the working directory, online.

    Raises:
        CheckpointError: an unknown or malformed name, a path outside a Hub repo, "hf-hub:" with
            anything but ORG/NAME, missing files.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise CheckpointError(
            f"a network name must be a string of 1 to {MAX_NAME_CHARS} characters, got {describe(name)}"
        )
    local_files_only = source.local_files_only if source else False
    if name.startswith(HF_HUB_PREFIX):
        repo, revision = parse_hub_name(name[len(HF_HUB_PREFIX) :])
        return _hub_files(HubFolder(repo, revision, "", local_files_only), pretrained)
    if name.startswith(LOCAL_DIR_PREFIX):
        path_text = name[len(LOCAL_DIR_PREFIX) :]
        if source is not None and source.hub_repo is not None:
            subfolder = _confined_subfolder(path_text, source)
            return _hub_files(HubFolder(source.hub_repo, source.revision, subfolder, local_files_only), pretrained)
        path = Path(path_text).expanduser()
        if source is not None and not path.is_absolute():
            path = source.path / path
        return _folder_files(path.resolve(), pretrained)
    return _registry_files(name, pretrained, local_files_only)
