"""The models an app or a command can use: manifest entries, loaded once each, with their status.

Loading may be slow or fail (a download, an unreachable Hub): ``ModelRegistry`` records why a
model is unavailable instead of raising at start-up, and can load models in a background thread
so that a server answers while they arrive. A model whose classifier loads but whose explainer
does not is ready without P-TAME; its explainer is tried again now and then (``retry_explainer``),
so that P-TAME appears without a restart once it can be loaded. Listeners (``add_listener``)
hear of every change of a model's status, so that a server can show the states as they are.
"""

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ptame.errors import CheckpointError, ModelUnavailable
from ptame.explainer import PTAME
from ptame.serving.loader import LoadedModel, load_explainer, load_model
from ptame.serving.manifest import DEFAULT_MANIFEST, ModelEntry, load_manifest
from ptame.serving.reasons import failure_reason

State = Literal["waiting", "loading", "ready", "unavailable"]
LOAD_ERRORS = (CheckpointError, OSError, ValueError, RuntimeError)  # what a loader's failure may raise


@dataclass(frozen=True)
class ModelStatus:
    """Where one model stands.

    ``reason``: why it is unavailable (empty otherwise). ``explainer_problem``: for a ready model
    without its P-TAME explainer, why (empty otherwise).
    """

    key: str
    display_name: str
    state: State
    reason: str = ""
    explainer_problem: str = ""


@dataclass(frozen=True)
class ModelListing:
    """One model as an API lists it: its ``key`` (what requests name it by), display ``name``,
    ``state``, whether it has its P-TAME explainer (``p_tame``), why it is unavailable or lacks
    P-TAME (``reason``, "" if neither), and its class names by index (empty until it is loaded)."""

    key: str
    name: str
    state: State
    p_tame: bool
    reason: str
    classes: list[str]


def _ready_status(entry: ModelEntry, model: LoadedModel) -> ModelStatus:
    """The status of the loaded model of an entry, with why it lacks its explainer if it does."""
    problem = "" if model.has_explainer else model.explainer_problem or "its explainer is not loaded"
    return ModelStatus(entry.key, entry.display_name, "ready", explainer_problem=problem)


class ModelRegistry:
    """Manifest entries by key, each loaded at most once (thread-safe).

    Args:
        entries: the models, in display order; keys must be unique.
        device: where loaded models live ("cpu", "cuda").
        loader: (entry, device) -> loaded model (``ptame.serving.loader.load_model``; tests pass
            their own).
        explainer_loader: (entry, device, number of classes) -> explainer
            (``ptame.serving.loader.load_explainer``), for ``retry_explainer``.
        explainer_retry_s: ``get`` and ``load`` of a ready model lacking its explainer try it
            again in the background when this many seconds passed since the last attempt.
    """

    def __init__(
        self,
        entries: Sequence[ModelEntry],
        device: str = "cpu",
        loader: Callable[[ModelEntry, str], LoadedModel] = load_model,
        explainer_loader: Callable[[ModelEntry, str, int], PTAME] = load_explainer,
        explainer_retry_s: float = 300.0,
    ) -> None:
        keys = [entry.key for entry in entries]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ValueError(f"model keys must be unique; repeated: {duplicates}")
        self.entries = {entry.key: entry for entry in entries}
        self.device = device
        self._loader = loader
        self._explainer_loader = explainer_loader
        self.explainer_retry_s = explainer_retry_s
        self._models: dict[str, LoadedModel] = {}
        self._status = {entry.key: ModelStatus(entry.key, entry.display_name, "waiting") for entry in entries}
        self._lock = threading.Lock()
        self._key_locks = {key: threading.Lock() for key in self.entries}
        self._explainer_locks = {key: threading.Lock() for key in self.entries}
        self._explainer_attempts: dict[str, float] = {}  # key -> time.monotonic() of the last attempt
        self._retrying: set[str] = set()  # keys with a background retry started and not finished
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of a model's status (loading, ready, unavailable,
        an explainer found or lost), on the thread that made it, with no lock held."""
        with self._lock:
            self._listeners.append(listener)

    def _notify(self) -> None:
        """Tell the listeners that a status changed (no lock held)."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def load(self, key: str) -> LoadedModel:
        """The loaded model of ``key``, loading it now if needed (blocks while another thread loads it).

        A ready model lacking its explainer may start a background retry (as ``get``).

        Raises:
            ModelUnavailable: unknown key, or loading failed (this time or before), with the reason.
        """
        if key not in self.entries:
            raise ModelUnavailable(f"unknown model {key!r}; known models: {', '.join(self.entries) or 'none'}")
        with self._key_locks[key]:
            with self._lock:
                model = self._models.get(key)
                status = self._status[key]
                if model is None and status.state == "unavailable":
                    raise ModelUnavailable(f"{status.display_name} is unavailable: {status.reason}")
                if model is None:
                    self._status[key] = ModelStatus(key, status.display_name, "loading")
            if model is not None:
                self._retry_in_background_if_due(key, model)
                return model
            self._notify()
            entry = self.entries[key]
            try:
                model = self._loader(entry, self.device)
            except LOAD_ERRORS as error:
                reason = failure_reason(error, f"{entry.display_name} is unavailable")
                with self._lock:
                    self._status[key] = ModelStatus(key, entry.display_name, "unavailable", reason)
                self._notify()
                raise ModelUnavailable(f"{entry.display_name} is unavailable: {reason}") from error
            with self._lock:
                self._models[key] = model
                self._status[key] = _ready_status(self.entries[key], model)
                self._explainer_attempts[key] = time.monotonic()
            self._notify()
            return model

    def get(self, key: str) -> LoadedModel:
        """The model of ``key`` if it is loaded; never loads the model itself.

        For a ready model lacking the explainer its entry names, when ``explainer_retry_s`` passed
        since the last attempt, starts ``retry_explainer`` in a daemon thread (returns at once,
        with the model as it is now).

        Raises:
            ModelUnavailable: unknown, not loaded yet (says so), or failed to load (says why).
        """
        with self._lock:
            model = self._models.get(key)
            status = self._status.get(key)
        if model is not None:
            self._retry_in_background_if_due(key, model)
            return model
        if status is None:
            raise ModelUnavailable(f"unknown model {key!r}; known models: {', '.join(self.entries) or 'none'}")
        if status.state == "unavailable":
            raise ModelUnavailable(f"{status.display_name} is unavailable: {status.reason}")
        raise ModelUnavailable(f"{status.display_name} is still loading; try again in a moment.")

    def retry_explainer(self, key: str) -> bool:
        """Try now to load the explainer of a ready model that lacks it (blocks; one attempt per
        key at a time).

        On success the model gets its explainer (a new ``LoadedModel``) and its status loses its
        ``explainer_problem``; on failure ``explainer_problem`` says the new reason.

        Returns:
            Whether the model has its explainer now (False for a model not loaded, or whose entry
            names no explainer).

        Raises:
            ModelUnavailable: unknown key.
        """
        if key not in self.entries:
            raise ModelUnavailable(f"unknown model {key!r}; known models: {', '.join(self.entries) or 'none'}")
        entry = self.entries[key]
        with self._explainer_locks[key]:
            with self._lock:
                model = self._models.get(key)
                if model is None:
                    return False
                if model.has_explainer or entry.explainer is None:
                    return model.has_explainer
                self._explainer_attempts[key] = time.monotonic()
            try:
                explainer = self._explainer_loader(entry, self.device, len(model.backbone.class_names))
            except LOAD_ERRORS as error:
                problem = failure_reason(error, f"the explainer of {entry.display_name} cannot be loaded")
                model = replace(model, explainer_problem=problem)
            else:
                model = replace(model, explainer=explainer, explainer_problem="")
            with self._lock:
                self._models[key] = model
                self._status[key] = _ready_status(self.entries[key], model)
            self._notify()
            return model.has_explainer

    def _retry_in_background_if_due(self, key: str, model: LoadedModel) -> None:
        """Start ``retry_explainer(key)`` in a daemon thread if the model lacks its explainer, its
        entry names one, no retry of it is running and ``explainer_retry_s`` passed since the last."""
        if model.has_explainer or self.entries[key].explainer is None:
            return
        with self._lock:
            last = self._explainer_attempts.get(key, float("-inf"))
            if key in self._retrying or time.monotonic() - last < self.explainer_retry_s:
                return
            self._retrying.add(key)

        def retry() -> None:
            try:
                self.retry_explainer(key)
            finally:
                with self._lock:
                    self._retrying.discard(key)

        threading.Thread(target=retry, name=f"ptame-explainer-retry-{key}", daemon=True).start()

    def explainers_pending(self) -> bool:
        """Whether a ready model lacks the explainer its entry names and a retry may still bring it
        (never with ``explainer_retry_s`` infinite)."""
        if math.isinf(self.explainer_retry_s):
            return False
        with self._lock:
            return any(
                not model.has_explainer and self.entries[key].explainer is not None
                for key, model in self._models.items()
            )

    def retry_due_explainers(self) -> None:
        """Start the background retry of every ready model's missing explainer that is due (as ``get`` does)."""
        with self._lock:
            models = list(self._models.items())
        for key, model in models:
            self._retry_in_background_if_due(key, model)

    def load_in_background(self, keys: Sequence[str] | None = None) -> threading.Thread:
        """Load ``keys`` (default: all not yet loaded) one after another in a daemon thread.

        Failures are recorded in ``statuses()``, not raised. Returns the thread (join it to wait).
        """
        pending = [key for key in (keys if keys is not None else self.entries) if key not in self._models]

        def load_each() -> None:
            for key in pending:
                try:
                    self.load(key)
                except ModelUnavailable:
                    continue  # recorded in the status

        thread = threading.Thread(target=load_each, name="ptame-model-loader", daemon=True)
        thread.start()
        return thread

    def statuses(self) -> list[ModelStatus]:
        """Every model's status, in display order."""
        with self._lock:
            return [self._status[key] for key in self.entries]

    def listing(self) -> list[ModelListing]:
        """Every model as an API lists it (``ModelListing``), in display order."""
        with self._lock:
            models = dict(self._models)
            statuses = [self._status[key] for key in self.entries]
        return [
            ModelListing(
                key=status.key,
                name=status.display_name,
                state=status.state,
                p_tame=status.key in models and models[status.key].has_explainer,
                reason=status.reason or status.explainer_problem,
                classes=list(models[status.key].backbone.class_names) if status.key in models else [],
            )
            for status in statuses
        ]

    def ready_keys(self) -> list[str]:
        """Keys of the loaded models, in display order."""
        with self._lock:
            return [key for key in self.entries if key in self._models]

    def loading(self) -> bool:
        """Whether any model is still waiting to load or loading (its status will change)."""
        return any(status.state in ("waiting", "loading") for status in self.statuses())


MODEL_DIR_ENV = "PTAME_MODEL_DIR"  # extra model folders, separated by os.pathsep


def model_dirs_from_env() -> list[Path]:
    """The folders named by ``$PTAME_MODEL_DIR`` (os.pathsep-separated; empty if unset)."""
    return [Path(part).expanduser() for part in os.environ.get(MODEL_DIR_ENV, "").split(os.pathsep) if part.strip()]


def build_registry(
    manifest: Path = DEFAULT_MANIFEST,
    model_dirs: Sequence[Path] = (),
    device: str = "cpu",
    classifiers: Sequence[ModelEntry] = (),
) -> tuple[ModelRegistry, list[str]]:
    """A registry of the manifest's models, then model folders (each with classifier/ and,
    optionally, explainer/), then ``classifiers`` (e.g. ``ModelEntry.from_classifier``'s).

    A later entry replaces an earlier one with the same key. Nothing is loaded yet.

    Returns:
        The registry, and one message per source that could not be read (manifest or folder);
        the others are still used.
    """
    entries: dict[str, ModelEntry] = {}
    problems = []
    try:
        entries.update((entry.key, entry) for entry in load_manifest(manifest))
    except (CheckpointError, OSError, ValueError) as error:
        problems.append(f"the model manifest {manifest} cannot be read: {error}")
    for folder in model_dirs:
        try:
            entry = ModelEntry.from_folder(Path(folder))
        except (CheckpointError, OSError, ValueError) as error:
            problems.append(f"the model folder {folder} cannot be used: {error}")
            continue
        entries[entry.key] = entry
    entries.update((entry.key, entry) for entry in classifiers)
    return ModelRegistry(list(entries.values()), device=device), problems
