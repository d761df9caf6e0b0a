"""Explaining images with loaded models: one lock for all model work, a result cache, timings.

The app and the command line share this. An image is analysed once per model (its class
probabilities and P-TAME's maps of *every* class, in one pass); each (image, model, class,
method) map is computed at most once while it stays in the cache.

Model work runs in two lanes, each one computation at a time: the fast lane (the classifier and
P-TAME passes, Grad-CAM) and the slow lane (Score-CAM, RISE, deletion/insertion curves: hundreds
to thousands of passes). So at most two computations share the memory, and a visitor's P-TAME map
never waits behind another visitor's minutes of Score-CAM. Target-layer hooks only record the
thread that registered them (``ptame.saliency.capture_target_layer``), so the lanes do not mix.
Given ``lane_threads``, each lane computes with that many torch threads (the app: half the cores
each), and a slow method takes every core between its batches while the fast lane is idle.
"""

import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch

from ptame.baselines import BASELINES
from ptame.explainer import normalize_maps
from ptame.images import CheckedImage, read_image
from ptame.manifest import LoadedModel
from ptame.registry import ModelRegistry
from ptame.saliency import as_feature_grid, capture_target_layer, single_output

METHOD_NAMES: dict[str, str] = {
    "ptame": "P-TAME",
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "rise": "RISE",
}
DEFAULT_METHODS = ("ptame", "gradcam", "scorecam")
STREAMED_METHODS = frozenset({"scorecam", "rise"})  # slow: reported with progress, shown when done
SCORE_CAM_BATCH = 32  # masked copies per forward pass: bounded memory on a CPU Space
RISE_MASKS = 2000  # fewer than the paper's 8000: a demo answer in seconds, not minutes
DELETION_STEPS = 32
LANES = 2  # the fast and the slow lane of ExplainSession

Progress = Callable[[int, int], None]  # (done, total)

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class LRUCache(Generic[Key, Value]):
    """A thread-safe least-recently-used map with at most ``capacity`` entries."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[Key, Value] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> Value | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Key, value: Value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass(frozen=True)
class Analysis:
    """What one pass over an image gives, for one model.

    Attributes:
        pixels: (1, 3, S, S) in [0, 1], the model's input (its preprocessing's centre crop).
        picture: (S, S, 3) uint8, the same image for display.
        probabilities: (K,) float, softmax of the classifier's logits.
        ptame_maps: (K, h, w) raw P-TAME maps of every class.
        predict_seconds: time of the classifier's forward pass.
        ptame_seconds: time of the explainer's pass (all K classes).
        cam_channels: channels of the classifier's CAM target layer (Score-CAM's passes).
    """

    pixels: torch.Tensor
    picture: np.ndarray
    probabilities: np.ndarray
    ptame_maps: torch.Tensor
    predict_seconds: float
    ptame_seconds: float
    cam_channels: int

    def top(self, count: int) -> list[int]:
        """The ``count`` most probable class indices, most probable first."""
        return [int(i) for i in np.argsort(-self.probabilities, kind="stable")[:count]]


@dataclass(frozen=True)
class Explanation:
    """One method's saliency map for one class.

    Attributes:
        method: a key of ``METHOD_NAMES``.
        class_index: the explained class.
        saliency: (S, S) float32 in [0, 1], on the model's input crop.
        seconds: compute time (P-TAME: its one pass, which mapped every class).
    """

    method: str
    class_index: int
    saliency: np.ndarray
    seconds: float


@dataclass(frozen=True)
class Curves:
    """Deletion and insertion curves of one map: class probability vs. fraction of pixels.

    ``fractions``, ``deletion``, ``insertion``: (steps + 1,) float; AUCs in [0, 1] (deletion:
    lower is better; insertion: higher is better).
    """

    method: str
    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    deletion_auc: float
    insertion_auc: float


class ExplainSession:
    """Analyses and explanations of images for the models of a registry, cached.

    Args:
        registry: the models.
        analyses: how many (image, model) analyses to keep (each holds K raw maps).
        explanations: how many (image, model, class, method) maps to keep.
        lane_threads: torch threads of each lane's computations, or None to leave the calling
            thread's count alone (one caller at a time, as the command line).
        cores: the threads a slow method may take while the fast lane is idle (default: all
            cores); only with ``lane_threads``.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        analyses: int = 16,
        explanations: int = 512,
        lane_threads: int | None = None,
        cores: int | None = None,
    ) -> None:
        if lane_threads is not None and lane_threads < 1:
            raise ValueError(f"lane_threads must be >= 1, got {lane_threads}")
        self.registry = registry
        self.lane_threads = lane_threads
        self.cores = max(cores or os.cpu_count() or 1, lane_threads or 1)
        self.fast_lane = threading.Lock()
        self.slow_lane = threading.Lock()
        self._images: LRUCache[tuple[str, int, int], CheckedImage] = LRUCache(analyses)
        self._analyses: LRUCache[tuple[str, str], Analysis] = LRUCache(analyses)
        self._explanations: LRUCache[tuple[str, str, int, str], Explanation] = LRUCache(explanations)
        self._curves: LRUCache[tuple[str, str, int, str], Curves] = LRUCache(explanations)
        self._seconds: dict[tuple[str, str], float] = {}

    def read(self, source: str | Path | None) -> CheckedImage:
        """``ptame.images.read_image`` of a file, remembered per (path, size, modification time).

        Raises:
            ImageInputError: as ``read_image``.
        """
        if source is None or not str(source).strip():
            return read_image(None)
        path = Path(source)
        try:
            stat = path.stat()
        except OSError:
            return read_image(path)  # raises its clear error
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        checked = self._images.get(key)
        if checked is None:
            checked = read_image(path)
            self._images.put(key, checked)
        return checked

    def analyse(self, image: CheckedImage, model_key: str) -> Analysis:
        """Class probabilities and every class's P-TAME map for an image (cached).

        Raises:
            ModelUnavailable: the model is unknown, loading, or failed to load.
        """
        key = (image.digest, model_key)
        cached = self._analyses.get(key)
        if cached is not None:
            return cached
        model = self.registry.get(model_key)
        with self.fast_lane, self._threads(self.lane_threads):
            cached = self._analyses.get(key)
            if cached is not None:
                return cached
            analysis = _analyse(model, image)
            self._analyses.put(key, analysis)
            return analysis

    def cached_analysis(self, image: CheckedImage, model_key: str) -> Analysis | None:
        """The analysis if it is in the cache, else None (never runs a model)."""
        return self._analyses.get((image.digest, model_key))

    def cached(self, image: CheckedImage, model_key: str, class_index: int, method: str) -> Explanation | None:
        """The explanation if it is known without running a model, else None."""
        if method == "ptame":
            analysis = self._analyses.get((image.digest, model_key))
            if analysis is None or not 0 <= class_index < analysis.probabilities.shape[0]:
                return None
            return _ptame_explanation(analysis, class_index)
        return self._explanations.get((image.digest, model_key, class_index, method))

    def explain(
        self,
        image: CheckedImage,
        model_key: str,
        class_index: int,
        method: str,
        progress: Progress | None = None,
    ) -> Explanation:
        """One method's map of one class for an image (cached).

        Args:
            image: a checked image.
            model_key: a loaded model's key.
            class_index: in [0, K).
            method: a key of ``METHOD_NAMES``.
            progress: called with (done, total) by the slow methods (Score-CAM, RISE).

        Raises:
            ValueError: unknown method or class index out of range.
            ModelUnavailable: the model is unknown, loading, or failed to load.
        """
        if method not in METHOD_NAMES:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHOD_NAMES)}")
        analysis = self.analyse(image, model_key)
        if not 0 <= class_index < analysis.probabilities.shape[0]:
            raise ValueError(f"class index {class_index} is outside [0, {analysis.probabilities.shape[0]})")
        if method == "ptame":
            return _ptame_explanation(analysis, class_index)
        key = (image.digest, model_key, class_index, method)
        cached = self._explanations.get(key)
        if cached is not None:
            return cached
        model = self.registry.get(model_key)
        slow = method in STREAMED_METHODS
        with self.slow_lane if slow else self.fast_lane, self._threads(self.lane_threads):
            cached = self._explanations.get(key)
            if cached is not None:
                return cached
            if slow:
                progress = self._borrowing_idle_cores(progress)
            explanation = _baseline_explanation(model, analysis, class_index, method, progress)
            self._explanations.put(key, explanation)
            self._seconds[(model_key, method)] = explanation.seconds
            return explanation

    def expected_seconds(self, image: CheckedImage, model_key: str, method: str) -> float:
        """A method's expected compute time on this model: its last measured time, else an estimate.

        The estimate for Score-CAM is one classifier pass per CAM channel, for RISE one per mask,
        each timed as the image's own classifier pass; Grad-CAM, two passes; P-TAME, its pass.
        """
        measured = self._seconds.get((model_key, method))
        if measured is not None:
            return measured
        analysis = self.analyse(image, model_key)
        passes = {"ptame": 0, "gradcam": 2, "gradcam++": 2, "scorecam": analysis.cam_channels + 1, "rise": RISE_MASKS}
        return analysis.ptame_seconds if method == "ptame" else passes[method] * analysis.predict_seconds

    def curves(self, image: CheckedImage, model_key: str, class_index: int, method: str) -> Curves:
        """Deletion and insertion curves of a method's map (computes the map if needed; cached)."""
        key = (image.digest, model_key, class_index, method)
        cached = self._curves.get(key)
        if cached is not None:
            return cached
        # Imported here: ptame.metrics loads pytorch-grad-cam's ROAD (scikit-learn, matplotlib), about
        # 2 s that the app's start-up need not pay for curves computed on demand.
        from ptame.metrics import deletion_insertion

        explanation = self.explain(image, model_key, class_index, method)
        analysis = self.analyse(image, model_key)
        model = self.registry.get(model_key)
        with self.slow_lane, self._threads(self.lane_threads):
            result = deletion_insertion(
                model.backbone,
                analysis.pixels,
                torch.from_numpy(explanation.saliency).unsqueeze(0).to(analysis.pixels.device),
                torch.tensor([class_index], device=analysis.pixels.device),
                steps=DELETION_STEPS,
            )
        curves = Curves(
            method=method,
            fractions=result.fractions.cpu().numpy(),
            deletion=result.deletion[0].cpu().numpy(),
            insertion=result.insertion[0].cpu().numpy(),
            deletion_auc=float(result.deletion_auc[0]),
            insertion_auc=float(result.insertion_auc[0]),
        )
        self._curves.put(key, curves)
        return curves

    def _threads(self, count: int | None) -> AbstractContextManager[None]:
        """Torch threads of the calling thread set to ``count`` (None: unchanged) for a block."""
        return nullcontext() if count is None else _torch_threads(count)

    def _borrowing_idle_cores(self, progress: Progress | None) -> Progress | None:
        """A slow method's progress callback that, before each of its batches, gives it every core
        while the fast lane is idle and the lane's share otherwise (a fast request arriving
        mid-batch shares the cores until that batch ends)."""
        if self.lane_threads is None:
            return progress

        def report(done: int, total: int) -> None:
            torch.set_num_threads(self.lane_threads if self.fast_lane.locked() else self.cores)
            if progress is not None:
                progress(done, total)

        return report


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _analyse(model: LoadedModel, image: CheckedImage) -> Analysis:
    backbone, explainer = model.backbone, model.explainer
    device = next(explainer.head.parameters()).device
    pixels = backbone.preprocessing.transform()(image.image).unsqueeze(0).to(device)
    with torch.inference_mode():
        start = time.perf_counter()
        with capture_target_layer(backbone) as outputs:
            probabilities = backbone.logits(pixels).float().softmax(dim=1)[0]
        predict_seconds = time.perf_counter() - start
        start = time.perf_counter()
        ptame_maps = explainer(pixels)[0].float()
        ptame_seconds = time.perf_counter() - start
    try:
        cam_channels = int(as_feature_grid(backbone, single_output(outputs, backbone)).shape[1])
    except ValueError:
        cam_channels = 0  # not a CAM-able target layer: Score-CAM's own call will say why
    picture = (pixels[0].permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    return Analysis(
        pixels=pixels,
        picture=picture,
        probabilities=probabilities.cpu().numpy(),
        ptame_maps=ptame_maps,
        predict_seconds=predict_seconds,
        ptame_seconds=ptame_seconds,
        cam_channels=cam_channels,
    )


def _ptame_explanation(analysis: Analysis, class_index: int) -> Explanation:
    size = tuple(analysis.pixels.shape[-2:])
    saliency = normalize_maps(analysis.ptame_maps[class_index].unsqueeze(0), size)[0]
    return Explanation("ptame", class_index, saliency.cpu().numpy().astype(np.float32), analysis.ptame_seconds)


def _baseline_explanation(
    model: LoadedModel, analysis: Analysis, class_index: int, method: str, progress: Progress | None
) -> Explanation:
    options: dict[str, object] = {}
    if method == "scorecam":
        options = {"batch_size": SCORE_CAM_BATCH, "progress": progress}
    elif method == "rise":
        options = {"num_masks": RISE_MASKS, "batch_size": SCORE_CAM_BATCH, "progress": progress}
    classes = torch.tensor([class_index], device=analysis.pixels.device)
    start = time.perf_counter()
    maps = BASELINES[method](model.backbone, analysis.pixels, classes, **options)
    seconds = time.perf_counter() - start
    saliency = maps[0].detach().float().cpu().numpy()
    if not np.isfinite(saliency).all():
        saliency = np.nan_to_num(saliency, nan=0.0, posinf=1.0, neginf=0.0)
    return Explanation(method, class_index, np.clip(saliency, 0.0, 1.0).astype(np.float32), seconds)


def format_seconds(seconds: float) -> str:
    """A duration for captions: "12 ms", "1.4 s", "2 min 5 s"."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 1.0:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 60.0:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def display_class_names(class_names: list[str]) -> list[str]:
    """Class names made unique for display: a repeated name gets its index ("crane (134)")."""
    counts: dict[str, int] = {}
    for name in class_names:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name} ({index})" for index, name in enumerate(class_names)]


def threads_per_lane(cores: int | None = None) -> int:
    """Torch CPU threads per lane, so that both lanes together use each core once.

    Oversubscribed cores are far worse than idle ones for torch's OpenMP kernels: each parallel
    region waits for its slowest thread, and a thread that shares its core with another process
    stalls every region (a ResNet-50 pass went from 0.09 s on 1 thread to 1.5 s on 2 threads with
    one of the 2 cores busy, on the development machine).

    Args:
        cores: CPU cores to share (default: ``os.cpu_count()``).
    """
    return max(1, (cores or os.cpu_count() or 1) // LANES)
