"""Loading a manifest entry's models: its classifier and, if it can, its P-TAME explainer.

``load_model`` loads an entry (``ptame.serving.manifest.ModelEntry``): a classifier that fails is
a ``CheckpointError`` saying why (the model is unavailable); an explainer that fails leaves a
classifier-only model (the baselines still work), with the reason a visitor may read
(``ptame.serving.reasons``: no server path) while the log keeps the details. With
``HF_HUB_OFFLINE=1``, or when a probe finds the Hub unreachable, only local folders and caches are
read, so every failure covers an unreachable Hub with nothing cached.
"""

import logging
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import LocalEntryNotFoundError

from ptame.errors import CheckpointError, shorten
from ptame.explainer import LOCAL_DIR_PREFIX, PTAME
from ptame.loading.backbones import USER_FUNCTION, Backbone, create_backbone
from ptame.loading.checkpoint import CONFIG_NAME
from ptame.loading.hub import UNREACHABLE
from ptame.loading.untrusted import read_json_object
from ptame.serving.manifest import ModelEntry
from ptame.serving.reasons import failure_reason

HUB_PROBE_TIMEOUT_S = 3.0  # connecting to the Hub longer than this counts as unreachable
logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A manifest entry with its classifier and its explainer, both in eval mode on one device.

    explainer: None when it could not be loaded (or none is configured): then only the methods
    without ``uses_explainer`` work, and ``explainer_problem`` says why, as a clause that follows
    "no P-TAME explainer:" ("no explainer is configured for it", "cannot load the explainer
    ORG/NAME: ..."), with no path of the server's disk.
    """

    entry: ModelEntry
    backbone: Backbone
    explainer: PTAME | None
    explainer_problem: str = ""

    @property
    def has_explainer(self) -> bool:
        """Whether the P-TAME explainer is loaded."""
        return self.explainer is not None


def _classifier_uses_hub(entry: ModelEntry) -> bool:
    """Whether loading the entry's classifier may read the Hub (anything but a local folder or a
    user's "MODULE:FUNCTION")."""
    return not (entry.classifier.startswith(LOCAL_DIR_PREFIX) or USER_FUNCTION.fullmatch(entry.classifier))


def _explainer_uses_hub(entry: ModelEntry) -> bool:
    """Whether loading the entry's explainer may read the Hub: anything but local folders all the way down."""
    if entry.explainer is None:
        return False
    if not entry.explainer_is_folder:
        return True
    try:
        auxiliary = read_json_object(Path(entry.explainer) / CONFIG_NAME).get("auxiliary", "")
    except CheckpointError:
        return False  # from_pretrained reports the broken folder
    return not str(auxiliary).startswith((LOCAL_DIR_PREFIX, "custom:"))


def _offline(uses_hub: bool) -> bool:
    """Whether to read the local caches only: offline mode is on, or the Hub is needed and unreachable."""
    return hub_constants.HF_HUB_OFFLINE or (uses_hub and not hub_reachable())


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub's endpoint opens within ``timeout`` seconds."""
    endpoint = urllib.parse.urlparse(hub_constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _check_torchvision_cache(entry: ModelEntry) -> None:
    """Offline, torchvision's ViT-B/16 weights must already be in torch's hub cache (torchvision
    downloads them from download.pytorch.org, which has no offline mode of its own)."""
    if entry.classifier != "vit_b_16":
        return
    url = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(url).path).name
    if not cached.is_file():
        raise CheckpointError(
            f"cannot load the classifier {entry.classifier}: the Hub is unreachable or offline mode is on, and "
            f"torchvision's ViT-B/16 weights are not in torch's cache ({cached})"
        )


def _offline_note(error: BaseException, offline: bool) -> str:
    """What to add to a loading error when a file was missing from the local cache while offline
    (nothing when its message says so already)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, LocalEntryNotFoundError):
            said = UNREACHABLE in str(error)
            return "the Hub is unreachable or offline mode is on; " if offline and not said else ""
        cause = cause.__cause__
    return ""


def _load_classifier(entry: ModelEntry, offline: bool) -> Backbone:
    """The entry's classifier on the CPU; CheckpointError saying why on any failure.
    Offline, only local folders and caches are read (for this call: nothing process-wide changes)."""
    if offline:
        _check_torchvision_cache(entry)
    try:
        return create_backbone(
            entry.classifier, pretrained=True, local_files_only=offline, target_layer=entry.target_layer
        )
    except Exception as error:  # noqa: BLE001 - timm, torchvision and huggingface_hub raise many types
        reason = _offline_note(error, offline)
        named = "" if repr(entry.classifier) in str(error) else f" {shorten(entry.classifier, 200)}"  # said once
        raise CheckpointError(f"cannot load the classifier{named}: {reason}{error}") from error


def _load_explainer(entry: ModelEntry, device: str, num_classes: int, offline: bool) -> PTAME:
    """``load_explainer`` with the offline decision made: any exception at all becomes a
    CheckpointError (logged with its traceback), so that a good classifier is never lost to its
    explainer."""
    try:
        return _load_explainer_raising(entry, device, num_classes, offline)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the explainer raises, the classifier keeps serving
        logger.exception("the explainer of %s failed with an unexpected error", entry.display_name)
        raise CheckpointError(
            f"cannot load the explainer {shorten(str(entry.explainer), 200)}: {type(error).__name__}: {error}"
        ) from error


def _load_explainer_raising(entry: ModelEntry, device: str, num_classes: int, offline: bool) -> PTAME:
    if entry.explainer is None:
        raise CheckpointError("no explainer is configured for it")
    try:
        explainer = PTAME.from_pretrained(
            entry.explainer, revision=entry.explainer_revision, local_files_only=offline
        )
    except CheckpointError as error:
        reason = _offline_note(error, offline)
        raise CheckpointError(f"cannot load the explainer {shorten(entry.explainer, 200)}: {reason}{error}") from error
    if explainer.num_classes != num_classes:
        raise CheckpointError(
            f"the explainer has {explainer.num_classes} classes, its classifier {shorten(entry.classifier, 200)} "
            f"has {num_classes}"
        )
    return explainer.to(device).eval()


def load_explainer(entry: ModelEntry, device: str, num_classes: int) -> PTAME:
    """Load an entry's P-TAME explainer (eval mode, on ``device``) for a classifier of ``num_classes``.

    Offline or with the Hub unreachable, only local folders and the local cache are read (as
    ``load_model``).

    Raises:
        CheckpointError: why, as a clause that follows "no P-TAME explainer:": none is
            configured for it, unreachable and not cached, missing or damaged files, or made for
            another number of classes; whatever else loading it raised (MemoryError, ...).
    """
    return _load_explainer(entry, device, num_classes, _offline(_explainer_uses_hub(entry)))


def load_model(entry: ModelEntry, device: str = "cpu") -> LoadedModel:
    """Load an entry's classifier (its trained weights) and, if it can, its explainer.

    With ``HF_HUB_OFFLINE=1``, or when the Hub cannot be reached within HUB_PROBE_TIMEOUT_S,
    only local folders and the local caches are read: a missing file fails at once instead of
    after the Hub client's retries.

    Args:
        entry: from ``load_manifest``, ``ModelEntry.from_folder`` or ``ModelEntry.from_classifier``.
        device: where to put both models.

    Returns:
        The classifier (frozen, eval mode) and the explainer (eval mode) on ``device``; where the
        explainer cannot be loaded (see ``load_explainer``), explainer None and
        ``explainer_problem`` the CheckpointError's message as a visitor may read it (logged whole).

    Raises:
        CheckpointError: the classifier cannot be loaded (unreachable and not cached, missing or
            damaged files), saying why.
    """
    offline = _offline(_classifier_uses_hub(entry) or _explainer_uses_hub(entry))
    backbone = _load_classifier(entry, offline).to(device)
    try:
        explainer = _load_explainer(entry, device, len(backbone.class_names), offline)
    except CheckpointError as error:
        problem = failure_reason(error, f"no P-TAME explainer for {entry.display_name} (explainer: {entry.explainer})")
        return LoadedModel(entry=entry, backbone=backbone, explainer=None, explainer_problem=problem)
    return LoadedModel(entry=entry, backbone=backbone, explainer=explainer)
