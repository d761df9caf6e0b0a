"""Explaining images with loaded models: an analysis per image and model, each method's maps, curves, cached.

The app and the command line share this. An image is analysed once per model (its class
probabilities and P-TAME's maps of *every* class, in one pass); each (image, model, class,
method) map is computed at most once while it stays in the cache. Methods come from the registry
(``ptame.methods``); model work runs in the fast and the slow lane (``ptame.serving.lanes``).
Target-layer hooks only record the thread that registered them
(``ptame.methods.hooks.capture_target_layer``), so the lanes do not mix.

A model without its P-TAME explainer still runs the other methods; asked for P-TAME, it says why
there is none (``ExplainerMissing``). An analysis made before its explainer arrived is not reused
after: the analysis cache's key says whether the model had its explainer.
"""

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from threading import Lock

import numpy as np
import torch

from ptame.class_coverage import class_coverage_note
from ptame.errors import ExplainerMissing, MethodFailed, ModelUnavailable
from ptame.methods import Method, explainer_method, get_method, reference_method
from ptame.methods.hooks import as_feature_grid, capture_target_layer, single_output
from ptame.metrics import deletion_insertion
from ptame.serving.cache import LRUCache
from ptame.serving.captions import blank_map_note, display_class_names, domain_note, explainer_missing_message
from ptame.serving.gpu import on_gpu
from ptame.serving.images import CheckedImage, read_image
from ptame.serving.lanes import Lanes, Progress
from ptame.serving.loader import LoadedModel
from ptame.serving.models import ModelRegistry
from ptame.serving.results import Analysis, Curves, CurvesTable, Explanation, Gallery, GalleryItem, StreamUpdate

DELETION_STEPS = 32

IMAGENET_CLASSES = 1000  # the label space of classifiers made for photos
ProgressFor = Callable[[str], Progress | None]  # method key -> its progress callback
AnalysisKey = tuple[str, str, bool]  # (image digest, model key, whether the model had its explainer)


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
        self.registry = registry
        self.lanes = Lanes(lane_threads, cores)
        self._images: LRUCache[tuple[str, int, int], CheckedImage] = LRUCache(analyses)
        self._analyses: LRUCache[AnalysisKey, Analysis] = LRUCache(analyses)
        self._explanations: LRUCache[tuple[str, str, int, str], Explanation] = LRUCache(explanations)
        self._curves: LRUCache[tuple[str, str, int, str], Curves] = LRUCache(explanations)
        self._seconds: dict[tuple[str, str], float] = {}

    @property
    def fast_lane(self) -> Lock:
        """The fast lane's lock (held while a fast computation runs)."""
        return self.lanes.fast_lane

    @property
    def slow_lane(self) -> Lock:
        """The slow lane's lock (held while a slow computation runs)."""
        return self.lanes.slow_lane

    def read(self, source: str | Path | None) -> CheckedImage:
        """``ptame.serving.images.read_image`` of a file, remembered per (path, size, modification time).

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
        return self._images.get_or_compute(key, lambda: read_image(path))

    def analyse(self, image: CheckedImage, model_key: str) -> Analysis:
        """Class probabilities and, if the model has its explainer, every class's P-TAME map for an
        image (cached; the fast lane).

        Raises:
            ModelUnavailable: the model is unknown, loading, or failed to load.
        """
        return self._analysis(image, model_key, self.registry.get(model_key))

    def _analysis(self, image: CheckedImage, model_key: str, model: LoadedModel) -> Analysis:
        """``analyse`` with the model of ``model_key`` as it is now (with or without its explainer)."""
        return self._analyses.get_or_compute(
            _analysis_key(image, model_key, model), lambda: on_gpu(_analyse, model, image), self.lanes.fast()
        )

    def cached_analysis(self, image: CheckedImage, model_key: str) -> Analysis | None:
        """The analysis if it is in the cache, else None (never runs a model)."""
        try:
            model = self.registry.get(model_key)
        except ModelUnavailable:
            return None
        return self._analyses.get(_analysis_key(image, model_key, model))

    def cached(self, image: CheckedImage, model_key: str, class_index: int, method: str) -> Explanation | None:
        """The explanation if it is known without running a model, else None (also for a method
        that needs an explainer the model lacks).

        Raises:
            ValueError: unknown method.
        """
        chosen = get_method(method)
        if chosen.uses_explainer:
            try:
                model = self.registry.get(model_key)
            except ModelUnavailable:
                return None
            analysis = self._analyses.get(_analysis_key(image, model_key, model))
            if analysis is None or analysis.ptame_maps is None:
                return None
            if not 0 <= class_index < analysis.probabilities.shape[0]:
                return None
            return self._from_analysis(chosen, model, analysis, class_index)
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
            method: a registered method's key.
            progress: called with (done, total) by the streamed methods.

        Raises:
            ValueError: unknown method or class index out of range.
            ModelUnavailable: the model is unknown, loading, or failed to load.
            ExplainerMissing: the method needs the model's P-TAME explainer, which is not loaded
                (the message says why and how to get one).
            MethodFailed: the method or the classifier failed on this image.
        """
        chosen = get_method(method)
        model = self.registry.get(model_key)
        if chosen.uses_explainer and not model.has_explainer:
            raise ExplainerMissing(explainer_missing_message(model))
        analysis = self._analysis(image, model_key, model)
        if not 0 <= class_index < analysis.probabilities.shape[0]:
            raise ValueError(f"class index {class_index} is outside [0, {analysis.probabilities.shape[0]})")
        if chosen.uses_explainer:
            return self._from_analysis(chosen, model, analysis, class_index)

        def compute() -> Explanation:
            reporter = self.lanes.borrowing_idle_cores(progress) if chosen.streamed else None
            explanation = on_gpu(_run, chosen, model, analysis, class_index, reporter)
            self._seconds[(model_key, method)] = explanation.seconds
            return explanation

        key = (image.digest, model_key, class_index, method)
        return self._explanations.get_or_compute(
            key, compute, self.lanes.slow() if chosen.streamed else self.lanes.fast()
        )

    def explain_stream(
        self,
        image: CheckedImage,
        model_key: str,
        class_index: int | None,
        methods: Sequence[str],
        progress_for: ProgressFor | None = None,
    ) -> Iterator[StreamUpdate]:
        """Several methods' maps of one class, yielded as they become ready.

        The fast methods (and streamed ones already cached) are computed first; then, before each
        remaining streamed method runs, an update lists what is done and what is still to come;
        the last update holds every map, in the order of ``methods``. Methods that need the
        model's P-TAME explainer, where it is not loaded, are not run: every update lists them in
        ``unavailable`` with the reason.

        Args:
            image: a checked image.
            model_key: a loaded model's key.
            class_index: in [0, K), or None for the top-1 class.
            methods: registered keys, at least one.
            progress_for: method key -> its progress callback (done, total), for streamed methods.

        Raises:
            as ``explain``.
        """
        if not methods:
            raise ValueError("choose at least one method to explain with")
        model = self.registry.get(model_key)
        asked = [get_method(method) for method in dict.fromkeys(methods)]
        unavailable = {
            m.key: explainer_missing_message(model) for m in asked if m.uses_explainer and not model.has_explainer
        }
        chosen = [m for m in asked if m.key not in unavailable]
        analysis = self._analysis(image, model_key, model)
        index = analysis.top(1)[0] if class_index is None else class_index
        done = {m.key: self.explain(image, model_key, index, m.key) for m in chosen if not m.streamed}
        for method in chosen:
            known = self.cached(image, model_key, index, method.key) if method.streamed else None
            if known is not None:
                done[method.key] = known
        pending = [m.key for m in chosen if m.key not in done]
        expected = {key: self.expected_seconds(image, model_key, key) for key in pending}
        domain, name = self.domain_note(image, model_key), model.backbone.class_names[index]

        def update(explanations: dict[str, Explanation]) -> StreamUpdate:
            waiting = {key: expected[key] for key in pending}
            notes = _notes(model, unavailable, explanations, domain, index, name)
            return StreamUpdate(analysis, index, explanations, list(pending), waiting, dict(unavailable), name, notes)

        while pending:
            yield update(dict(done))
            key = pending.pop(0)
            progress = progress_for(key) if progress_for is not None else None
            done[key] = self.explain(image, model_key, index, key, progress=progress)
        yield update({m.key: done[m.key] for m in chosen})

    def class_names(self, model_key: str) -> list[str]:
        """The model's class names made unique for display (``captions.display_class_names``), by index.

        Raises:
            ModelUnavailable: the model is unknown, loading, or failed to load.
        """
        return display_class_names(self.registry.get(model_key).backbone.class_names)

    def gallery(self, image: CheckedImage, model_key: str, count: int) -> Gallery | None:
        """The explainer method's maps of the image's ``count`` most probable classes, all from the
        analysis' one pass (no model runs once the image is analysed); None for a model without
        its explainer.

        Raises:
            ModelUnavailable: the model is unknown, loading, or failed to load.
        """
        analysis = self.analyse(image, model_key)
        if analysis.ptame_maps is None:
            return None
        method, reference = explainer_method().key, reference_method().key
        names = self.class_names(model_key)
        items = [
            GalleryItem(i, names[i], float(analysis.probabilities[i]), self.explain(image, model_key, i, method))
            for i in analysis.top(count)
        ]
        reference_seconds = len(items) * self.expected_seconds(image, model_key, reference)
        classes = analysis.probabilities.shape[0]
        return Gallery(method, items, analysis.ptame_seconds, classes, reference, reference_seconds)

    def photo_model(self, preferred: str | None = None) -> str | None:
        """The key of a ready model whose classifier has ImageNet's 1000 classes, to explain photos
        with: ``preferred`` if it is one, else the first in display order; None if there is none."""
        keys = [
            key
            for key in self.registry.ready_keys()
            if len(self.registry.get(key).backbone.class_names) == IMAGENET_CLASSES
        ]
        if preferred in keys:
            return preferred
        return keys[0] if keys else None

    def domain_note(self, image: CheckedImage, model_key: str) -> str | None:
        """``captions.domain_note`` of the model's entry for the image: a warning when the image is
        not of the size of the model's world, else None.

        Raises:
            ModelUnavailable: unknown model.
        """
        entry = self.registry.entries.get(model_key)
        if entry is None:
            raise ModelUnavailable(f"unknown model {model_key!r}; known models: {', '.join(self.registry.entries)}")
        return domain_note(entry, image.image.size)

    def expected_seconds(self, image: CheckedImage, model_key: str, method: str) -> float:
        """A method's expected compute time on this model: its last measured time, else an estimate.

        The estimate is the method's forward passes (``Method.passes``), each timed as the image's
        own classifier pass; for a method that reads the explainer, the explainer's pass (0.0
        without explainer).
        """
        measured = self._seconds.get((model_key, method))
        if measured is not None:
            return measured
        analysis = self.analyse(image, model_key)
        chosen = get_method(method)
        if chosen.uses_explainer:
            return analysis.ptame_seconds
        return chosen.forward_passes(analysis.cam_channels) * analysis.predict_seconds

    def curves(self, image: CheckedImage, model_key: str, class_index: int, method: str) -> Curves:
        """Deletion and insertion curves of a method's map (computes the map if needed; cached)."""

        def compute() -> Curves:
            explanation = self.explain(image, model_key, class_index, method)
            analysis = self.analyse(image, model_key)
            model = self.registry.get(model_key)
            device = analysis.pixels.device
            with self.lanes.slow():
                result = on_gpu(
                    deletion_insertion,
                    model.backbone,
                    analysis.pixels,
                    torch.from_numpy(explanation.saliency).unsqueeze(0).to(device),
                    torch.tensor([class_index], device=device),
                    steps=DELETION_STEPS,
                )
            return Curves(
                method=method,
                fractions=result.fractions.cpu().numpy(),
                deletion=result.deletion[0].cpu().numpy(),
                insertion=result.insertion[0].cpu().numpy(),
                deletion_auc=float(result.deletion_auc[0]),
                insertion_auc=float(result.insertion_auc[0]),
            )

        return self._curves.get_or_compute((image.digest, model_key, class_index, method), compute)

    def curves_table(
        self,
        image: CheckedImage,
        model_key: str,
        class_index: int,
        methods: Sequence[str],
        progress: Callable[[int, int, str], None] | None = None,
    ) -> CurvesTable:
        """``curves`` of several methods' maps of one class; a method that needs the model's
        missing P-TAME explainer is listed in ``unavailable`` with the reason instead.

        Args:
            progress: called with (methods done, methods in all, the next method's key) before each.

        Raises:
            as ``explain``, but ``ExplainerMissing``.
        """
        curves, unavailable = {}, {}
        for done, method in enumerate(methods):
            if progress is not None:
                progress(done, len(methods), method)
            try:
                curves[method] = self.curves(image, model_key, class_index, method)
            except ExplainerMissing as error:
                unavailable[method] = str(error)
        return CurvesTable(class_index, curves, unavailable)

    def _from_analysis(self, method: Method, model: LoadedModel, analysis: Analysis, class_index: int) -> Explanation:
        """A method that reads the explainer, from the analysis' all-class pass (no model runs).

        ``analysis`` must be the model's with its explainer (``ptame_maps`` not None).
        """
        classes = torch.tensor([class_index], device=analysis.pixels.device)
        options = {**method.options, "explainer": model.explainer, "all_class_maps": analysis.ptame_maps.unsqueeze(0)}
        maps = method(model.backbone, analysis.pixels, classes, **options)
        return _explanation(method.key, class_index, maps, analysis.ptame_seconds)


def _notes(
    model: LoadedModel,
    unavailable: dict[str, str],
    explanations: dict[str, Explanation],
    domain: str | None,
    class_index: int,
    class_name: str,
) -> list[str]:
    """A stream update's notes: why methods are unavailable (each message once), which maps are
    blank, that P-TAME's map is the class-agnostic one of a class it never trained on or one of a
    class it rarely trained on (``ptame.class_coverage``), and the domain note
    (``ExplainSession.domain_note``) if there is one."""
    notes = list(dict.fromkeys(unavailable.values()))
    layer = model.backbone.target_layer_name
    notes += [blank_map_note(key, layer) for key, done in explanations.items() if done.blank]
    if model.has_explainer and any(get_method(key).uses_explainer for key in explanations):
        coverage = class_coverage_note(model.explainer, class_index, class_name)
        notes += [coverage] if coverage else []
    return [*notes, domain] if domain else notes


def _analysis_key(image: CheckedImage, model_key: str, model: LoadedModel) -> AnalysisKey:
    """The analysis cache's key: an analysis made without the explainer is not one made with it."""
    return (image.digest, model_key, model.has_explainer)


def _analyse(model: LoadedModel, image: CheckedImage) -> Analysis:
    """The classifier's pass over an image and, if the model has its explainer, its all-class pass."""
    backbone, explainer = model.backbone, model.explainer
    device = next(backbone.model.parameters()).device
    pixels = backbone.preprocessing.transform()(image.image).unsqueeze(0).to(device)
    with torch.inference_mode():
        start = time.perf_counter()
        with capture_target_layer(backbone) as outputs:
            probabilities = backbone.logits(pixels).float().softmax(dim=1)[0]
        predict_seconds = time.perf_counter() - start
        ptame_maps, ptame_seconds = None, 0.0
        if explainer is not None:
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


def _run(
    method: Method, model: LoadedModel, analysis: Analysis, class_index: int, progress: Progress | None
) -> Explanation:
    """Run a method on an analysed image, timed."""
    options = {**method.options, **({"progress": progress} if method.streamed else {})}
    classes = torch.tensor([class_index], device=analysis.pixels.device)
    start = time.perf_counter()
    try:
        maps = method(model.backbone, analysis.pixels, classes, **options)
    except (RuntimeError, ValueError) as error:
        raise MethodFailed(f"{method.name} failed on this image: {error}") from error
    return _explanation(method.key, class_index, maps, time.perf_counter() - start)


def _explanation(method: str, class_index: int, maps: torch.Tensor, seconds: float) -> Explanation:
    """An explanation of a (1, S, S) map, made finite and clipped to [0, 1] as float32."""
    saliency = maps[0].detach().float().cpu().numpy()
    if not np.isfinite(saliency).all():
        saliency = np.nan_to_num(saliency, nan=0.0, posinf=1.0, neginf=0.0)
    return Explanation(method, class_index, np.clip(saliency, 0.0, 1.0).astype(np.float32), seconds)
