"""P-TAME demo: upload an image and see why the classifier decided, beside Grad-CAM and Score-CAM.

    python app.py [--model-dir FOLDER]... [--classifier NAME [--explainer SPEC]]... [--manifest PATH] [--device cpu]

Serves on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (default 127.0.0.1:7860). The shapes demo is
loaded before serving; the other models of checkpoints/manifest.toml (and of --model-dir /
$PTAME_MODEL_DIR folders, and --classifier ones) load in the background once the server is up,
and the page says which are unavailable and why. A model whose classifier loads but whose
explainer does not is offered with the baselines only, and gets P-TAME once its explainer can be
loaded. This file builds the UI and wires events; the work is done by ptame.
"""

import argparse
import atexit
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import torch

from ptame.errors import ExplainerMissing, ImageInputError, MethodFailed, ModelUnavailable
from ptame.interop.plugins import MethodModuleError, register_method_modules
from ptame.methods import METHODS, default_method_keys, get_method
from ptame.serving.captions import blank_map_note, display_class_names, format_seconds, method_caption
from ptame.serving.export import prune_folder, save_maps
from ptame.serving.gpu import load_before_launch, serving_device, zero_gpu
from ptame.serving.images import MAX_FILE_BYTES, CheckedImage
from ptame.serving.lanes import threads_per_lane
from ptame.serving.manifest import DEFAULT_MANIFEST, ModelEntry
from ptame.serving.models import ModelRegistry, build_registry, model_dirs_from_env
from ptame.serving.results import Analysis, Explanation
from ptame.serving.session import ExplainSession
from ptame.serving.viz import COLORMAPS, DEFAULT_COLORMAP, DEFAULT_OPACITY, overlay

logger = logging.getLogger(__name__)

EXAMPLES = Path(__file__).resolve().parent / "checkpoints" / "examples"
DEMO_MODEL = "shapes"  # loaded before serving; every other model loads in the background
TOP_CLASSES = 5  # predictions listed
GALLERY_CLASSES = 5  # P-TAME maps in the gallery by default
MAX_GALLERY_CLASSES = 12
GALLERY_HEIGHT = 200  # pixels: one row of five maps, more rows scroll
OVERLAY_HEIGHT = 280  # pixels: the shapes demo's 128-pixel maps are shown enlarged
KEPT_DOWNLOADS = 256  # .npz files kept for download; older ones are deleted
GRADIO_CACHE_CLEANING = (3600, 3600)  # every hour, delete uploads and outputs older than an hour
MODEL_QUEUE = "models"  # one queue for every event that runs a model
MODEL_CONCURRENCY = 4  # requests in flight; ptame.serving.session runs one fast and one slow computation at a time
QUEUE_OPTIONS = {"max_size": 64}  # requests waiting beyond this are told the queue is full
LAUNCH_OPTIONS = {"max_file_size": MAX_FILE_BYTES, "theme": gr.themes.Soft()}
PROGRESS = gr.Progress()  # Gradio gives each call its own tracker in place of this default

INTRO = """
# P-TAME: why did the classifier decide that?
Upload an image (or paste one, or use the webcam), pick a model and press **Explain**.
**P-TAME** ([Ntrougkas, Mezaris, Patras, 2025](https://arxiv.org/abs/2501.17813)) maps every
class in one pass of a small trained head; **Grad-CAM** reads the classifier's gradients;
**Score-CAM** runs the classifier once per feature channel, so it is slow and arrives last.
Maps are drawn on the model's centre crop; below them, P-TAME's maps of the top classes from its
one pass: click one to explain that class with every method.
"""
PHOTOS_WITHOUT_MODEL = (
    "The photos are for the ImageNet models, and none is ready here (see **Models**). "
    "The model selected now will explain them, but it does not know photos."
)


FileData = dict[str, Any]  # an upload as Gradio sends it when preprocess=False: {"path": ..., ...}


TEMPORARY_FOLDERS: list[Path] = []  # removed at exit, on SIGTERM and on SIGINT


def remove_temporary_folders() -> None:
    """Remove the folders ``temporary_folder`` made."""
    for folder in TEMPORARY_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def temporary_folder(prefix: str) -> Path:
    """A new temporary folder, removed when the process exits normally or is stopped by SIGTERM
    (how Spaces and containers stop a server) or SIGINT (Ctrl-C): see ``stop_on_signal``."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    TEMPORARY_FOLDERS.append(folder)
    return folder


def stop_on_signal(signum: int, frame: object) -> None:
    """SIGTERM / SIGINT handler: remove the temporary folders and exit at once with the shell's
    status for the signal (an interpreter shutdown would wait on, or abort in, model threads)."""
    remove_temporary_folders()
    logging.shutdown()
    os._exit(128 + signum)


def uploaded_path(upload: FileData | str | None) -> str | None:
    """The server-side path of an uploaded image (events skip Gradio's preprocessing, which would
    decode the file before ``ptame.serving.images`` can check it)."""
    if isinstance(upload, dict):
        return upload.get("path")
    return upload


class Handlers:
    """The event handlers: user input -> ``ExplainSession`` calls -> component updates.

    Args:
        session: the models and caches.
        downloads: folder for the .npz files offered for download.
    """

    def __init__(self, session: ExplainSession, downloads: Path) -> None:
        self.session = session
        self.downloads = downloads

    # Inputs

    def _image(self, upload: FileData | str | None, warn: bool) -> CheckedImage:
        try:
            checked = self.session.read(uploaded_path(upload))
        except ImageInputError as error:
            raise gr.Error(str(error), title="This image cannot be explained") from error
        if warn:
            for note in checked.notes:
                gr.Warning(note)
        return checked

    def _analysis(self, image: CheckedImage, model_key: str) -> Analysis:
        try:
            return self.session.analyse(image, model_key)
        except ModelUnavailable as error:
            raise gr.Error(str(error), title="Model unavailable") from error

    @staticmethod
    def _methods(methods: Sequence[str] | None) -> list[str]:
        chosen = [m for m in METHODS if m in (methods or ())]
        unknown = sorted(set(methods or ()) - set(METHODS))
        if unknown:
            raise gr.Error(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
        if not chosen:
            raise gr.Error("Choose at least one method to explain with.")
        return chosen

    @staticmethod
    def _class_index(value: int | str | float | None, analysis: Analysis) -> int:
        count = analysis.probabilities.shape[0]
        try:
            index = int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError) as error:
            raise gr.Error(f"The class must be an index in [0, {count}), got {value!r}.") from error
        if not 0 <= index < count:
            raise gr.Error(f"The class index {index} is outside [0, {count}).")
        return index

    @staticmethod
    def _gallery_size(value: int | float | None) -> int:
        try:
            count = int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return GALLERY_CLASSES
        return min(max(count, 1), MAX_GALLERY_CLASSES)

    # Outputs

    def _overlays(
        self,
        analysis: Analysis,
        methods: Sequence[str],
        explanations: dict[str, Explanation],
        expected: dict[str, float],
        unavailable: dict[str, str],
        opacity: float,
        colormap: str,
    ) -> list[Any]:
        updates = []
        for method in METHODS.values():
            if method.key not in methods:
                updates.append(gr.Image(value=None, visible=False))
            elif method.key in unavailable:
                updates.append(gr.Image(value=None, label=f"{method.name} · no explainer (see below)", visible=True))
            elif method.key in explanations:
                done = explanations[method.key]
                picture = overlay(analysis.picture, done.saliency, opacity, colormap)
                label = method_caption(done.method, done.seconds, done.blank)
                updates.append(gr.Image(value=picture, label=label, visible=True))
            else:
                label = f"{method.name} · computing, about {format_seconds(expected[method.key])}"
                updates.append(gr.Image(value=None, label=label, visible=True))
        return updates

    def _gallery(
        self, image: CheckedImage, model_key: str, analysis: Analysis, count: int, opacity: float, colormap: str
    ) -> tuple[Any, str]:
        """P-TAME's maps of the top ``count`` classes from the analysis' one pass, and their caption."""
        if analysis.ptame_maps is None:
            return gr.Gallery(value=None, visible=False), ""
        names = display_class_names(self.session.registry.get(model_key).backbone.class_names)
        items = []
        for index in analysis.top(count):
            explanation = self.session.explain(image, model_key, index, "ptame")
            picture = overlay(analysis.picture, explanation.saliency, opacity, colormap)
            items.append((picture, f"{names[index]} · {analysis.probabilities[index]:.1%}"))
        classes = analysis.probabilities.shape[0]
        grad_cam = count * self.session.expected_seconds(image, model_key, "gradcam")
        caption = (
            f"P-TAME: these {count} maps in {format_seconds(analysis.ptame_seconds)}, from one pass that mapped all "
            f"{classes} classes; Grad-CAM would take about {format_seconds(grad_cam)} for them (one forward and "
            "one backward pass per class). Click a map to explain its class with every method."
        )
        return gr.Gallery(value=items, visible=True, selected_index=None), caption

    def _notes(
        self, image: CheckedImage, model_key: str, unavailable: dict[str, str], explanations: dict[str, Explanation]
    ) -> Any:
        lines = list(dict.fromkeys(unavailable.values()))
        layer = self.session.registry.get(model_key).backbone.target_layer_name
        lines += [blank_map_note(key, layer) for key, done in explanations.items() if done.blank]
        domain = self.session.domain_note(image, model_key)
        if domain:
            lines.append(domain)
        return gr.Markdown("\n\n".join(lines), visible=bool(lines))

    def _maps_file(
        self, analysis: Analysis, image: CheckedImage, model_key: str, index: int, explanations: dict[str, Explanation]
    ) -> str:
        model = self.session.registry.get(model_key)
        path = self.downloads / f"ptame-{model_key}-{image.digest[:12]}-class{index}.npz"
        save_maps(
            path, analysis.picture, list(explanations.values()), index, model.backbone.class_names[index], model_key
        )
        prune_folder(self.downloads, KEPT_DOWNLOADS)
        return str(path)

    # Events

    def explain(
        self,
        image: FileData | str | None,
        model_key: str,
        methods: Sequence[str],
        opacity: float = DEFAULT_OPACITY,
        colormap: str = DEFAULT_COLORMAP,
        gallery_classes: int = GALLERY_CLASSES,
        progress: gr.Progress = PROGRESS,
    ) -> Iterator[tuple[Any, ...]]:
        """Predict, then explain the top-1 class; slow methods stream in when done."""
        yield from self._explain(image, model_key, None, methods, opacity, colormap, gallery_classes, progress)

    def explain_class(
        self,
        image: FileData | str | None,
        model_key: str,
        class_index: int,
        methods: Sequence[str],
        opacity: float = DEFAULT_OPACITY,
        colormap: str = DEFAULT_COLORMAP,
        gallery_classes: int = GALLERY_CLASSES,
        progress: gr.Progress = PROGRESS,
    ) -> Iterator[tuple[Any, ...]]:
        """Explain another class of the same image (P-TAME's map is already there)."""
        yield from self._explain(image, model_key, class_index, methods, opacity, colormap, gallery_classes, progress)

    def explain_gallery_class(
        self,
        image: FileData | str | None,
        model_key: str,
        methods: Sequence[str],
        opacity: float,
        colormap: str,
        gallery_classes: int,
        selected: gr.SelectData,
        progress: gr.Progress = PROGRESS,
    ) -> Iterator[tuple[Any, ...]]:
        """Explain the class of the gallery map that was clicked, with every chosen method."""
        checked = self._image(image, warn=False)
        ranked = self._analysis(checked, model_key).top(self._gallery_size(gallery_classes))
        position = selected.index if isinstance(selected.index, int) else 0
        if not 0 <= position < len(ranked):
            raise gr.Error("That map is no longer in the gallery: press Explain again.")
        index = ranked[position]
        yield from self._explain(image, model_key, index, methods, opacity, colormap, gallery_classes, progress)

    def explain_example(self, image: FileData | str, model_key: str) -> Iterator[tuple[Any, ...]]:
        """The default explanation of an example image (cached by Gradio)."""
        methods = default_method_keys()
        yield from self._explain(
            image, model_key, None, methods, DEFAULT_OPACITY, DEFAULT_COLORMAP, GALLERY_CLASSES, None
        )

    def _explain(
        self,
        image_path: FileData | str | None,
        model_key: str,
        class_choice: int | None,
        methods: Sequence[str],
        opacity: float,
        colormap: str,
        gallery_classes: int,
        progress: gr.Progress | None,
    ) -> Iterator[tuple[Any, ...]]:
        methods = self._methods(methods)
        image = self._image(image_path, warn=class_choice is None)
        analysis = self._analysis(image, model_key)
        names = display_class_names(self.session.registry.get(model_key).backbone.class_names)
        index = analysis.top(1)[0] if class_choice is None else self._class_index(class_choice, analysis)
        ranked = analysis.top(len(names))
        predictions = {names[i]: float(analysis.probabilities[i]) for i in ranked[:TOP_CLASSES]}
        class_menu = gr.Dropdown(
            choices=[(f"{names[i]} · {analysis.probabilities[i]:.1%}", i) for i in ranked], value=index
        )
        gallery, gallery_caption = self._gallery(
            image, model_key, analysis, self._gallery_size(gallery_classes), opacity, colormap
        )
        heading = f"Explaining **{names[index]}** (class {index}) with {len(methods)} methods."
        try:
            for update in self.session.explain_stream(image, model_key, index, methods, _progress_for(progress)):
                if update.done:
                    break
                waiting = ", ".join(
                    f"{get_method(m).name} (about {format_seconds(update.expected_seconds[m])})" for m in update.pending
                )
                status = f"{heading} Still computing: {waiting}."
                overlays = self._overlays(
                    analysis,
                    methods,
                    update.explanations,
                    update.expected_seconds,
                    update.unavailable,
                    opacity,
                    colormap,
                )
                notes = self._notes(image, model_key, update.unavailable, update.explanations)
                yield (predictions, class_menu, *overlays, gallery, gallery_caption, notes, None, status)
        except ModelUnavailable as error:
            raise gr.Error(str(error), title="Model unavailable") from error
        except MethodFailed as error:
            raise gr.Error(str(error), title="Explaining failed") from error
        explanations = update.explanations
        overlays = self._overlays(analysis, methods, explanations, {}, update.unavailable, opacity, colormap)
        notes = self._notes(image, model_key, update.unavailable, explanations)
        maps_file = self._maps_file(analysis, image, model_key, index, explanations) if explanations else None
        status = f"Explained **{names[index]}** (class {index}); pick another class above or in the gallery."
        yield (predictions, class_menu, *overlays, gallery, gallery_caption, notes, maps_file, status)

    def reblend(
        self,
        image: FileData | str | None,
        model_key: str,
        class_index: int | None,
        methods: Sequence[str],
        opacity: float,
        colormap: str,
        gallery_classes: int = GALLERY_CLASSES,
    ) -> list[Any]:
        """Re-draw the overlays and the gallery from cached maps with a new opacity or colormap (no model runs)."""
        skipped = [gr.skip() for _ in range(len(METHODS) + 1)]
        if image is None or class_index is None or colormap not in COLORMAPS:
            return skipped
        try:
            checked = self.session.read(uploaded_path(image))
            index = int(class_index)
        except (ImageInputError, TypeError, ValueError):
            return skipped
        analysis = self.session.cached_analysis(checked, model_key)
        if analysis is None:
            return skipped
        updates = []
        for method in METHODS:
            known = self.session.cached(checked, model_key, index, method) if method in methods else None
            if known is None:
                updates.append(gr.skip())
            else:
                updates.append(overlay(analysis.picture, known.saliency, float(opacity), colormap))
        if analysis.ptame_maps is None:
            return [*updates, gr.skip()]
        gallery, _ = self._gallery(
            checked, model_key, analysis, self._gallery_size(gallery_classes), float(opacity), colormap
        )
        return [*updates, gallery]

    def curves(
        self,
        image: FileData | str | None,
        model_key: str,
        class_index: int | None,
        methods: Sequence[str],
        progress: gr.Progress = PROGRESS,
    ) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        """Deletion and insertion curves of each method's map for the chosen class."""
        methods = self._methods(methods)
        checked = self._image(image, warn=False)
        analysis = self._analysis(checked, model_key)
        if class_index is None:
            raise gr.Error("Press Explain first: the curves are computed for the explained class.")
        index = self._class_index(class_index, analysis)
        rows = []
        table = ["| method | deletion AUC (lower is better) | insertion AUC (higher is better) |", "|---|---|---|"]
        for done, method in enumerate(methods):
            name = get_method(method).name
            progress((done, len(methods)), desc=f"Deletion and insertion: {name}")
            try:
                result = self.session.curves(checked, model_key, index, method)
            except ExplainerMissing:
                table.append(f"| {name} | no explainer for this model | |")
                continue
            except ModelUnavailable as error:
                raise gr.Error(str(error), title="Model unavailable") from error
            except MethodFailed as error:
                raise gr.Error(str(error), title="Curves failed") from error
            for curve, values in (("deletion", result.deletion), ("insertion", result.insertion)):
                rows += [
                    {"fraction": float(f), "probability": float(p), "curve": curve, "method": name}
                    for f, p in zip(result.fractions, values)
                ]
            table.append(f"| {name} | {result.deletion_auc:.3f} | {result.insertion_auc:.3f} |")
        frame = pd.DataFrame(rows, columns=["fraction", "probability", "curve", "method"])
        return frame[frame.curve == "deletion"], frame[frame.curve == "insertion"], "\n".join(table)

    def photo_model(self, current: str | None) -> tuple[Any, Any]:
        """A photo example was picked: select an ImageNet model if one is ready, else say none is."""
        key = self.session.photo_model()
        if key is not None:
            return gr.Dropdown(value=key), gr.Markdown(visible=False)
        return gr.skip(), gr.Markdown(PHOTOS_WITHOUT_MODEL, visible=True)

    def refresh_models(self, current: str | None) -> tuple[Any, str, Any]:
        """The model menu (ready and loading models), the status text, and whether to poll again."""
        registry = self.session.registry
        registry.retry_due_explainers()
        choices, value = model_choices(registry, current)
        polling = registry.loading() or registry.explainers_pending()
        return gr.Dropdown(choices=choices, value=value), model_status(registry), gr.Timer(active=polling)


def _progress_for(progress: gr.Progress | None) -> Callable[[str], Callable[[int, int], None] | None]:
    """Method key -> a callback that shows that method's passes on Gradio's progress bar."""

    def reporter(method: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        name = get_method(method).name

        def report(done: int, total: int) -> None:
            progress((done, total), desc=name, unit="passes")

        return report

    return reporter


def model_choices(registry: ModelRegistry, current: str | None = None) -> tuple[list[tuple[str, str]], str | None]:
    """The model menu's (label, key) choices, ready and loading models, and the value to show."""
    choices = []
    for status in registry.statuses():
        if status.state == "ready" and status.explainer_problem:
            choices.append((f"{status.display_name} (baselines only)", status.key))
        elif status.state == "ready":
            choices.append((status.display_name, status.key))
        elif status.state in ("waiting", "loading"):
            choices.append((f"{status.display_name} (loading…)", status.key))
    keys = [key for _, key in choices]
    return choices, (current if current in keys else (keys[0] if keys else None))


def model_status(registry: ModelRegistry, problems: Sequence[str] = ()) -> str:
    """Markdown: each model's state, with the reason for the unavailable ones."""
    lines = []
    for status in registry.statuses():
        if status.state == "unavailable":
            lines.append(f"- **{status.display_name}**: unavailable: {status.reason}")
        elif status.state == "ready" and status.explainer_problem:
            lines.append(
                f"- **{status.display_name}**: ready with the baselines only; no P-TAME explainer: "
                f"{status.explainer_problem}"
            )
        elif status.state == "ready":
            lines.append(f"- **{status.display_name}**: ready")
        else:
            lines.append(f"- **{status.display_name}**: loading…")
    lines += [f"- {problem}" for problem in problems]
    return "\n".join(lines) if lines else "No model is configured."


def example_rows(registry: ModelRegistry) -> tuple[list[list[str]], list[str]]:
    """(shapes test images with the demo model, photos) found in the examples folder."""
    shapes = sorted(EXAMPLES.glob("shapes-*.png"))
    photos = sorted(EXAMPLES.glob("photo-*.jpg"))
    demo_ready = DEMO_MODEL in registry.ready_keys()
    return ([[str(path), DEMO_MODEL] for path in shapes] if demo_ready else []), [str(path) for path in photos]


OUTPUT_NAMES = (
    "predictions",
    "class_menu",
    *(f"overlay:{key}" for key in METHODS),
    "gallery",
    "gallery_caption",
    "notes",
    "maps_file",
    "status",
)  # the outputs of /explain, /explain_class and the gallery's clicks, in order


def build_demo(
    session: ExplainSession,
    problems: Sequence[str] = (),
    downloads: Path | None = None,
    cache_examples: bool = True,
) -> gr.Blocks:
    """The Gradio app of a session (not launched).

    Args:
        session: the models and caches.
        problems: messages about model sources that could not be read, shown with the models.
        downloads: folder of the .npz downloads (default: a new temporary folder).
        cache_examples: compute the shapes examples' results at launch (as a Space does).
    """
    handlers = Handlers(session, downloads or temporary_folder("ptame-downloads-"))
    registry = session.registry
    method_choices = [(method.name, key) for key, method in METHODS.items()]
    with gr.Blocks(title="P-TAME explainer", delete_cache=GRADIO_CACHE_CLEANING) as demo:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                image = gr.Image(
                    label="Image",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard", "webcam"],
                    height=320,
                )
                choices, value = model_choices(registry, DEMO_MODEL)
                model = gr.Dropdown(choices, value=value, label="Model", interactive=True, allow_custom_value=True)
                methods = gr.CheckboxGroup(method_choices, value=list(default_method_keys()), label="Methods")
                run = gr.Button("Explain", variant="primary")
            with gr.Column(scale=2, min_width=300):
                predictions = gr.Label(num_top_classes=TOP_CLASSES, label="Top-5 predictions")
                class_menu = gr.Dropdown(
                    choices=[], label="Class to explain (top-1 by default)", interactive=True, allow_custom_value=True
                )
                status = gr.Markdown("Upload an image, or pick an example below.", label="Status")
                with gr.Row():
                    overlays = [
                        gr.Image(
                            label=method.name,
                            interactive=False,
                            visible=method.default,
                            height=OVERLAY_HEIGHT,
                            min_width=160,
                            elem_id=f"overlay-{key.replace('+', 'p')}",
                        )
                        for key, method in METHODS.items()
                    ]
                notes = gr.Markdown(visible=False, elem_id="notes")
                gallery = gr.Gallery(
                    label="P-TAME: the top classes at a glance (click one to explain it)",
                    columns=GALLERY_CLASSES,
                    height=GALLERY_HEIGHT,
                    allow_preview=False,
                    object_fit="contain",
                    visible=False,
                    elem_id="gallery",
                )
                gallery_caption = gr.Markdown(elem_id="gallery-caption")
                with gr.Row():
                    opacity = gr.Slider(0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Map opacity")
                    colormap = gr.Dropdown(list(COLORMAPS), value=DEFAULT_COLORMAP, label="Colormap")
                    gallery_classes = gr.Slider(
                        1, MAX_GALLERY_CLASSES, value=GALLERY_CLASSES, step=1, label="Classes in the gallery"
                    )
                maps_file = gr.File(label="Raw maps (.npz)", interactive=False)
                with gr.Accordion("Deletion / insertion curves (on demand)", open=False):
                    curves_button = gr.Button("Compute the curves for the explained class")
                    with gr.Row():
                        deletion_plot = gr.LinePlot(
                            x="fraction", y="probability", color="method", label="Deletion", y_lim=[0, 1]
                        )
                        insertion_plot = gr.LinePlot(
                            x="fraction", y="probability", color="method", label="Insertion", y_lim=[0, 1]
                        )
                    auc_table = gr.Markdown(label="Areas under the curves")
        shape_rows, photo_rows = example_rows(registry)
        outputs = [predictions, class_menu, *overlays, gallery, gallery_caption, notes, maps_file, status]
        if shape_rows:
            gr.Examples(
                shape_rows,
                inputs=[image, model],
                outputs=outputs,
                fn=handlers.explain_example,
                cache_examples=cache_examples,
                cache_mode="eager",
                preprocess=False,
                label="Shapes world (test images; every method precomputed)",
                examples_per_page=len(shape_rows),
            )
        if photo_rows:
            photos = gr.Examples(photo_rows, inputs=[image], label="Photos (for the ImageNet models)")
            photos.dataset.click(
                handlers.photo_model, [model], [model, notes], api_visibility="private", show_progress="hidden"
            )
        with gr.Accordion("Models", open=False):
            models_status = gr.Markdown(model_status(registry, problems))
        timer = gr.Timer(2.0, active=registry.loading() or registry.explainers_pending())

        # preprocess=False: handlers get uploads as files, undecoded (see uploaded_path)
        model_work = {"concurrency_limit": MODEL_CONCURRENCY, "concurrency_id": MODEL_QUEUE, "preprocess": False}
        slow_overlays = [o for method, o in zip(METHODS.values(), overlays) if method.streamed]
        run.click(
            handlers.explain,
            [image, model, methods, opacity, colormap, gallery_classes],
            outputs,
            api_name="explain",
            show_progress_on=slow_overlays,  # the fast maps stay visible while Score-CAM runs
            **model_work,
        )
        class_menu.input(
            handlers.explain_class,
            [image, model, class_menu, methods, opacity, colormap, gallery_classes],
            outputs,
            api_name="explain_class",
            show_progress_on=slow_overlays,
            **model_work,
        )
        gallery.select(
            handlers.explain_gallery_class,
            [image, model, methods, opacity, colormap, gallery_classes],
            outputs,
            api_visibility="private",
            show_progress_on=slow_overlays,
            **model_work,
        )
        gr.on(
            [opacity.release, colormap.input, gallery_classes.release],
            handlers.reblend,
            [image, model, class_menu, methods, opacity, colormap, gallery_classes],
            [*overlays, gallery],
            api_name="reblend",
            show_progress="hidden",
            concurrency_limit=4,
            preprocess=False,
        )
        curves_button.click(
            handlers.curves,
            [image, model, class_menu, methods],
            [deletion_plot, insertion_plot, auc_table],
            api_name="curves",
            **model_work,
        )
        timer.tick(
            handlers.refresh_models,
            [model],
            [model, models_status, timer],
            api_visibility="private",
            show_progress="hidden",
        )
    return demo


class ClassifierAction(argparse.Action):
    """--classifier NAME: one more [classifier, explainer, target layer], its options still unset."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, option_string: Any = None
    ) -> None:
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), [value, None, None]])


class ClassifierOptionAction(argparse.Action):
    """--explainer SPEC / --target-layer NAME: an option of the last --classifier (once each)."""

    def __init__(self, *args: Any, position: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, option_string: Any = None
    ) -> None:
        specs = getattr(namespace, self.dest)
        if not specs or specs[-1][self.position] is not None:
            parser.error(f"{option_string} must follow the --classifier it belongs to (once each)")
        specs[-1][self.position] = value


def classifier_entries(specs: Sequence[Sequence[str | None]]) -> list[ModelEntry]:
    """The models of --classifier NAME [--explainer SPEC] [--target-layer NAME] groups."""
    return [
        ModelEntry.from_classifier(str(classifier), explainer, target_layer)
        for classifier, explainer, target_layer in specs
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model-dir",
        action="append",
        type=Path,
        default=[],
        help="a folder with classifier/ and explainer/ (repeatable; also $PTAME_MODEL_DIR)",
    )
    parser.add_argument(
        "--classifier",
        action=ClassifierAction,
        dest="classifiers",
        default=[],
        metavar="NAME",
        help="a classifier to offer beside the manifest's: a timm name, hf-hub:ORG/NAME or local-dir:PATH "
        "(repeatable); without --explainer it gets the baselines only",
    )
    parser.add_argument(
        "--explainer",
        action=ClassifierOptionAction,
        position=1,
        dest="classifiers",
        metavar="SPEC",
        help="the P-TAME explainer of the --classifier before it: a folder or a Hub repo ORG/NAME[@REVISION]",
    )
    parser.add_argument(
        "--target-layer",
        action=ClassifierOptionAction,
        position=2,
        dest="classifiers",
        metavar="NAME",
        help="the CAM methods' layer of the --classifier before it, a dotted module path (e.g. layer4, "
        "blocks.-1.norm1); default: its family's layer, else a probe's",
    )
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="the models' manifest (TOML)")
    parser.add_argument("--device", default="cpu", help="torch device for the models (cpu, cuda)")
    parser.add_argument(
        "--threads",
        type=int,
        default=threads_per_lane(),
        help="torch CPU threads (default: half the cores, one lane each)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        register_method_modules()  # captum's methods when captum is installed; $PTAME_METHOD_MODULES
    except MethodModuleError as error:
        raise SystemExit(f"error: {error}") from error
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    torch.set_num_threads(max(1, args.threads))
    try:
        classifiers = classifier_entries(args.classifiers)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    registry, problems = build_registry(
        args.manifest, [*model_dirs_from_env(), *args.model_dir], serving_device(args.device), classifiers
    )
    if zero_gpu():
        load_before_launch(registry)  # ZeroGPU: every model now, on the main thread (ptame/serving/gpu.py)
    elif DEMO_MODEL in registry.entries:
        try:
            registry.load(DEMO_MODEL)
        except ModelUnavailable as error:
            logger.warning("%s", error)
    atexit.register(remove_temporary_folders)
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, stop_on_signal)
    if "GRADIO_EXAMPLES_CACHE" not in os.environ:  # fresh per run: never results of older checkpoints
        os.environ["GRADIO_EXAMPLES_CACHE"] = str(temporary_folder("ptame-examples-"))
    for problem in problems:
        logger.warning("%s", problem)
    demo = build_demo(ExplainSession(registry, lane_threads=max(1, args.threads)), problems)
    demo.queue(**QUEUE_OPTIONS).launch(prevent_thread_lock=True, **LAUNCH_OPTIONS)
    if not zero_gpu():
        registry.load_in_background()  # after the server is up: start-up does not share the CPU with it
    demo.block_thread()


if __name__ == "__main__":
    main()
