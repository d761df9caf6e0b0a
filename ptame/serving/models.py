"""The models an app or a command can use: manifest entries, loaded once each, with their status.

Loading may be slow or fail (a download, an unreachable Hub): ``ModelRegistry`` records why a
model is unavailable instead of raising at start-up, and can load models in a background thread
so that a server answers while they arrive.
"""

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ptame.errors import CheckpointError, ModelUnavailable
from ptame.serving.manifest import DEFAULT_MANIFEST, LoadedModel, ModelEntry, load_manifest, load_model

State = Literal["waiting", "loading", "ready", "unavailable"]


@dataclass(frozen=True)
class ModelStatus:
    """Where one model stands. ``reason`` says why it is unavailable (empty otherwise)."""

    key: str
    display_name: str
    state: State
    reason: str = ""


class ModelRegistry:
    """Manifest entries by key, each loaded at most once (thread-safe).

    Args:
        entries: the models, in display order; keys must be unique.
        device: where loaded models live ("cpu", "cuda").
        loader: entry -> loaded model (``ptame.serving.manifest.load_model``; tests pass their own).
    """

    def __init__(
        self,
        entries: Sequence[ModelEntry],
        device: str = "cpu",
        loader: Callable[[ModelEntry, str], LoadedModel] = load_model,
    ) -> None:
        keys = [entry.key for entry in entries]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ValueError(f"model keys must be unique; repeated: {duplicates}")
        self.entries = {entry.key: entry for entry in entries}
        self.device = device
        self._loader = loader
        self._models: dict[str, LoadedModel] = {}
        self._status = {entry.key: ModelStatus(entry.key, entry.display_name, "waiting") for entry in entries}
        self._lock = threading.Lock()
        self._key_locks = {key: threading.Lock() for key in self.entries}

    def load(self, key: str) -> LoadedModel:
        """The loaded model of ``key``, loading it now if needed (blocks while another thread loads it).

        Raises:
            ModelUnavailable: unknown key, or loading failed (this time or before), with the reason.
        """
        if key not in self.entries:
            raise ModelUnavailable(f"unknown model {key!r}; known models: {', '.join(self.entries) or 'none'}")
        with self._key_locks[key]:
            with self._lock:
                if key in self._models:
                    return self._models[key]
                status = self._status[key]
                if status.state == "unavailable":
                    raise ModelUnavailable(f"{status.display_name} is unavailable: {status.reason}")
                self._status[key] = ModelStatus(key, status.display_name, "loading")
            entry = self.entries[key]
            try:
                model = self._loader(entry, self.device)
            except (CheckpointError, OSError, ValueError, RuntimeError) as error:
                reason = str(error) or type(error).__name__
                with self._lock:
                    self._status[key] = ModelStatus(key, entry.display_name, "unavailable", reason)
                raise ModelUnavailable(f"{entry.display_name} is unavailable: {reason}") from error
            with self._lock:
                self._models[key] = model
                self._status[key] = ModelStatus(key, entry.display_name, "ready")
            return model

    def get(self, key: str) -> LoadedModel:
        """The model of ``key`` if it is loaded; never loads.

        Raises:
            ModelUnavailable: unknown, not loaded yet (says so), or failed to load (says why).
        """
        with self._lock:
            if key in self._models:
                return self._models[key]
            status = self._status.get(key)
        if status is None:
            raise ModelUnavailable(f"unknown model {key!r}; known models: {', '.join(self.entries) or 'none'}")
        if status.state == "unavailable":
            raise ModelUnavailable(f"{status.display_name} is unavailable: {status.reason}")
        raise ModelUnavailable(f"{status.display_name} is still loading; try again in a moment.")

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
    manifest: Path = DEFAULT_MANIFEST, model_dirs: Sequence[Path] = (), device: str = "cpu"
) -> tuple[ModelRegistry, list[str]]:
    """A registry of the manifest's models plus model folders (each with classifier/ and explainer/).

    A folder's entry replaces a manifest entry with the same key. Nothing is loaded yet.

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
    return ModelRegistry(list(entries.values()), device=device), problems
