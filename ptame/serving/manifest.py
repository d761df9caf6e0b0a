"""The models the app offers: a commented TOML manifest, and the loader the app uses.

``checkpoints/manifest.toml`` has one ``[[models]]`` table per model: where its classifier and
its explainer live (a Hub repo with a pinned revision, or a local folder) and its display name.
``load_model`` turns an entry into a ready classifier + explainer pair; every failure, including
an unreachable Hub with nothing cached, is a ``CheckpointError`` that names the model.
"""

import contextlib
import json
import re
import socket
import threading
import tomllib
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from huggingface_hub import constants as hub_constants

from ptame.backbones import Backbone, create_backbone
from ptame.checkpoint import CONFIG_NAME
from ptame.errors import CheckpointError
from ptame.explainer import LOCAL_DIR_PREFIX, PTAME

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "checkpoints" / "manifest.toml"
REQUIRED_FIELDS = ("key", "display_name", "classifier", "explainer")
OPTIONAL_FIELDS = ("explainer_revision",)
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
FOLDER_PREFIXES = ("./", "../", "/", "~")  # an explainer value starting so is a folder, else a Hub repo id
HUB_PROBE_TIMEOUT_S = 3.0  # connecting to the Hub longer than this counts as unreachable
_offline_lock = threading.Lock()


@dataclass(frozen=True)
class ModelEntry:
    """One model of the app.

    key: short unique id ("shapes", "vgg16"). display_name: shown in the model selector.
    classifier: a ``create_backbone`` name ("vgg16", a timm name, "hf-hub:ORG/NAME[@rev]",
    "local-dir:PATH" with an absolute PATH). explainer: an absolute folder or a Hub repo id.
    explainer_revision: the commit (or branch) of a Hub explainer; None for a folder.
    """

    key: str
    display_name: str
    classifier: str
    explainer: str
    explainer_revision: str | None = None

    @classmethod
    def from_folder(cls, folder: Path) -> "ModelEntry":
        """The entry of a folder holding ``classifier/`` (timm format) and ``explainer/`` (PTAME),
        as ``python -m train shapes`` writes it; key and display name are the folder's name.

        Raises:
            CheckpointError: the folder or one of the two subfolders is missing.
        """
        folder = Path(folder).expanduser().resolve()
        for part in ("classifier", "explainer"):
            if not (folder / part).is_dir():
                raise CheckpointError(f"{folder} has no {part}/ folder (expected classifier/ and explainer/)")
        return cls(
            key=folder.name,
            display_name=folder.name,
            classifier=f"{LOCAL_DIR_PREFIX}{folder / 'classifier'}",
            explainer=str(folder / "explainer"),
        )

    @property
    def explainer_is_folder(self) -> bool:
        """Whether the explainer is a local folder (else a Hub repo id)."""
        return self.explainer.startswith(FOLDER_PREFIXES)


def _entry(table: object, number: int, path: Path) -> ModelEntry:
    where = f"{path}: model {number}"
    if not isinstance(table, dict):
        raise CheckpointError(f"{where} must be a [[models]] table, not {type(table).__name__}")
    unknown = sorted(set(table) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise CheckpointError(f"{where} has unknown fields {unknown} (allowed: {[*REQUIRED_FIELDS, *OPTIONAL_FIELDS]})")
    missing = [name for name in REQUIRED_FIELDS if name not in table]
    if missing:
        raise CheckpointError(f"{where} lacks the fields {missing}")
    for name, value in table.items():
        if not isinstance(value, str) or not value.strip():
            raise CheckpointError(f"{where}: {name} must be a non-empty string, got {value!r}")
    if not KEY_PATTERN.fullmatch(table["key"]):
        raise CheckpointError(f"{where}: key {table['key']!r} may hold only letters, digits, '_' and '-'")
    where = f"{path}: model {table['key']!r}"
    root = path.parent
    classifier = table["classifier"]
    if classifier.startswith(LOCAL_DIR_PREFIX):
        classifier = LOCAL_DIR_PREFIX + str((root / Path(classifier[len(LOCAL_DIR_PREFIX) :]).expanduser()).resolve())
    explainer = table["explainer"]
    revision = table.get("explainer_revision")
    if explainer.startswith(FOLDER_PREFIXES):
        if revision is not None:
            raise CheckpointError(
                f"{where}: explainer_revision applies to Hub repos only, not to the folder {explainer}"
            )
        explainer = str((root / Path(explainer).expanduser()).resolve())
    return ModelEntry(table["key"], table["display_name"], classifier, explainer, revision)


def load_manifest(path: Path = DEFAULT_MANIFEST) -> list[ModelEntry]:
    """The models of a manifest, in its order, with relative folders resolved against its folder.

    Raises:
        CheckpointError: the file is missing, not TOML, has no models, unknown or missing fields,
            values that are not non-empty strings, a malformed or repeated key, or a revision
            given for a folder.
    """
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CheckpointError(f"cannot read the model manifest {path}: {error}") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid TOML: {error}") from error
    unknown = sorted(set(document) - {"models"})
    if unknown:
        raise CheckpointError(f"{path} has unknown top-level keys {unknown}: only [[models]] tables belong there")
    tables = document.get("models")
    if not isinstance(tables, list) or not tables:
        raise CheckpointError(f"{path} lists no models: add at least one [[models]] table")
    entries = [_entry(table, number, path) for number, table in enumerate(tables, start=1)]
    keys = [entry.key for entry in entries]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise CheckpointError(f"{path} repeats the keys {repeated}")
    return entries


@dataclass
class LoadedModel:
    """A manifest entry with its classifier and its explainer, both in eval mode on one device."""

    entry: ModelEntry
    backbone: Backbone
    explainer: PTAME


def _uses_hub(entry: ModelEntry) -> bool:
    """Whether loading the entry may read the Hub: anything but local folders all the way down."""
    if not entry.classifier.startswith(LOCAL_DIR_PREFIX) or not entry.explainer_is_folder:
        return True
    try:
        auxiliary = json.loads((Path(entry.explainer) / CONFIG_NAME).read_text(encoding="utf-8")).get("auxiliary", "")
    except (OSError, ValueError, AttributeError):
        return False  # from_pretrained reports the broken folder
    return not str(auxiliary).startswith((LOCAL_DIR_PREFIX, "custom:"))


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub's endpoint opens within ``timeout`` seconds."""
    endpoint = urllib.parse.urlparse(hub_constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub's offline mode (the local cache only, no request) while loading.

    It is process-wide: set only when the Hub is unreachable anyway, where every other request
    would fail after its retries too.
    """
    with _offline_lock:
        previous = hub_constants.HF_HUB_OFFLINE
        hub_constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            hub_constants.HF_HUB_OFFLINE = previous


def _check_torchvision_cache(entry: ModelEntry) -> None:
    """Offline, torchvision's ViT-B/16 weights must already be in torch's hub cache (torchvision
    downloads them from download.pytorch.org, which has no offline mode of its own)."""
    if entry.classifier != "vit_b_16":
        return
    url = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(url).path).name
    if not cached.is_file():
        raise CheckpointError(
            f"cannot load the classifier {entry.classifier} of {entry.display_name!r}: the Hub is unreachable "
            f"or offline mode is on, and torchvision's ViT-B/16 weights are not cached at {cached}"
        )


def load_model(entry: ModelEntry, device: str = "cpu") -> LoadedModel:
    """Load an entry's classifier (its trained weights) and explainer, ready to explain.

    With ``HF_HUB_OFFLINE=1``, or when the Hub cannot be reached within HUB_PROBE_TIMEOUT_S,
    only local folders and the local caches are read: a missing file fails at once instead of
    after the Hub client's retries.

    Args:
        entry: from ``load_manifest`` or ``ModelEntry.from_folder``.
        device: where to put both models.

    Returns:
        The classifier (frozen, eval mode) and the explainer (eval mode) on ``device``.

    Raises:
        CheckpointError: naming the model and why (unreachable and not cached, missing or
            damaged files, an explainer made for another number of classes).
    """
    offline = hub_constants.HF_HUB_OFFLINE or (_uses_hub(entry) and not hub_reachable())
    with _hub_offline() if offline else contextlib.nullcontext():
        if offline:
            _check_torchvision_cache(entry)
        try:
            backbone = create_backbone(entry.classifier, pretrained=True)
        except Exception as error:  # timm, torchvision and huggingface_hub raise many types
            reason = "the Hub is unreachable or offline mode is on; " if offline else ""
            raise CheckpointError(
                f"cannot load the classifier {entry.classifier} of {entry.display_name!r}: {reason}{error}"
            ) from error
        try:
            explainer = PTAME.from_pretrained(entry.explainer, revision=entry.explainer_revision)
        except Exception as error:  # CheckpointError, or the auxiliary network's loading errors
            reason = "the Hub is unreachable or offline mode is on; " if offline else ""
            raise CheckpointError(
                f"cannot load the explainer {entry.explainer} of {entry.display_name!r}: {reason}{error}"
            ) from error
    classes = len(backbone.class_names)
    if explainer.num_classes != classes:
        raise CheckpointError(
            f"the explainer of {entry.display_name!r} has {explainer.num_classes} classes, "
            f"its classifier {entry.classifier} has {classes}"
        )
    return LoadedModel(entry=entry, backbone=backbone.to(device), explainer=explainer.to(device).eval())
