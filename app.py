"""P-TAME demo: upload an image and see why the classifier decided, beside Grad-CAM and Score-CAM.

    python app.py [--port PORT] [--host HOST] [--share] [--model-dir FOLDER]...
                  [--classifier NAME [--explainer SPEC] [--target-layer NAME]]... [--manifest PATH] [--device cpu]

Serves on --host:--port, as Gradio's launch(server_name, server_port) does: without them
$GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT, default 127.0.0.1:7860; --share also opens a public
*.gradio.live link (Gradio's share). The shapes demo is loaded before serving; the other models of
checkpoints/manifest.toml (and of --model-dir / $PTAME_MODEL_DIR folders, and --classifier ones)
load in the background once the server is up, and the page says which are unavailable and why. A
model whose classifier loads but whose explainer does not is offered with the baselines only, and
gets P-TAME once its explainer can be loaded. The Models panel and the /models API endpoint list
each model's key. This file builds the UI and wires events; the work is done by ptame.
"""

# ruff: noqa: E402 (the command line is parsed before torch, gradio and ptame load: --help answers at once)

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_PORT = 65535


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


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535 (argparse type)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 1 to {MAX_PORT}, got {text!r}") from None
    if not 1 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 1 to {MAX_PORT}, got {port}")
    return port


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (standard library only: ``--help`` answers before the heavy imports)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--port",
        type=port_number,
        default=None,
        help="the port to serve on (Gradio's server_port; default: $GRADIO_SERVER_PORT, else 7860)",
    )
    parser.add_argument(
        "--host",
        default=None,
        help="the address to serve on, 0.0.0.0 for every interface (Gradio's server_name; "
        "default: $GRADIO_SERVER_NAME, else 127.0.0.1)",
    )
    parser.add_argument(
        "--share",
        action="store_true",
        help="also serve through a public *.gradio.live link for 1 week (Gradio's share; needs the internet)",
    )
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
        "(repeatable); without --explainer it gets the baselines only. Its model key is NAME with each run "
        "of characters other than letters, digits, _ and - made one - (local-dir:my/model -> local-dir-my-model)",
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
    parser.add_argument(
        "--manifest", type=Path, default=None, help="the models' manifest (TOML; default: checkpoints/manifest.toml)"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the models (cpu, cuda)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: half the cores, one lane each)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGUMENTS = parse_args()  # --help and bad arguments answer here, before the imports below

import atexit
import dataclasses
import logging
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator

import gradio as gr
import pandas as pd
import torch

from ptame.errors import ImageInputError, MethodFailed, ModelUnavailable
from ptame.interop.plugins import MethodModuleError, register_method_modules
from ptame.methods import METHODS, Method, default_method_keys, explainer_method, get_method
from ptame.serving.captions import format_seconds, gallery_caption, method_caption
from ptame.serving.export import Downloads
from ptame.serving.gpu import load_before_launch, serving_device, zero_gpu
from ptame.serving.images import MAX_FILE_BYTES, CheckedImage
from ptame.serving.lanes import threads_per_lane
from ptame.serving.manifest import DEFAULT_MANIFEST, ModelEntry
from ptame.serving.models import ModelRegistry, build_registry, model_dirs_from_env
from ptame.serving.results import Analysis, CurvesTable, Gallery, StreamUpdate
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
LAUNCH_OPTIONS = {"max_file_size": MAX_FILE_BYTES, "theme": gr.themes.Soft(), "allowed_paths": [str(EXAMPLES)]}
PROGRESS = gr.Progress()  # Gradio gives each call its own tracker in place of this default
# preprocess=False: handlers get uploads as files, undecoded (see uploaded_path)
MODEL_WORK = {"concurrency_limit": MODEL_CONCURRENCY, "concurrency_id": MODEL_QUEUE, "preprocess": False}
INPUT_SCALE, RESULT_SCALE = 2, 3  # the widths of the input and the result columns
WITHOUT_EXPLAINER = f"(no {explainer_method().name})"  # after a model's name in the menu: short, so that it fits
LOADING = "(loading…)"

INTRO = """
# P-TAME: why did the classifier decide that?
Upload an image (or paste one, or use the webcam), pick a model and press **Explain**.
**P-TAME** ([Ntrougkas, Mezaris, Patras, 2025](https://arxiv.org/abs/2501.17813)) maps every
class in one pass of a small trained head; **Grad-CAM** reads the classifier's gradients;
**Score-CAM** runs the classifier once per feature channel, so it is slow and arrives last.
Maps are drawn on the model's centre crop; below them, P-TAME's maps of the top classes from its
one pass: click one to explain that class with every method.
"""
WELCOME = "Upload an image, or pick an example below."
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


CLASS_INDEX_API = {"type": "integer", "description": "a class index of the model, from 0 (/models lists its classes)"}


def class_menu() -> gr.Dropdown:
    """The class menu, typed in the API as a class index. Its choices change with each image and
    model, so Gradio's own type for it, a choice among the choices it has at launch, would offer
    none. (Set on the instance: Gradio writes a .pyi stub beside the file of a component subclass.)"""
    menu = gr.Dropdown(
        choices=[],
        label="Class to explain (top-1 by default)",
        interactive=True,
        allow_custom_value=True,
        render=False,
    )
    menu.api_info = lambda: CLASS_INDEX_API  # type: ignore[method-assign]
    return menu


def overlay_label(method: Method) -> str:
    """An overlay's label before its first map, which is also its name in the API: the method's
    name with each "+" spelled " plus" (gradio_client names an output by the letters, digits and
    spaces of its label, so Grad-CAM++ would be "gradcam", as Grad-CAM is)."""
    return method.name.replace("+", " plus")


class Page:
    """The app's components, made unrendered: ``build_demo`` lays them out, and the handlers return
    ``{component: value}`` updates of them. There is one overlay per method of the registry.

    Args:
        registry: the models, for the model menu and its status.
        problems: messages about model sources that could not be read, shown with the models.
    """

    def __init__(self, registry: ModelRegistry, problems: Sequence[str] = ()) -> None:
        self._inputs(registry)
        self._results()
        self._settings()
        self.problems = list(problems)
        self.models_status = gr.Markdown(model_status(registry, problems), label="Models", render=False)
        self.models_list = gr.JSON(label="Models", visible=False, render=False)  # the /models endpoint's output
        self.timer = gr.Timer(2.0, active=registry.loading() or registry.explainers_pending(), render=False)

    def _inputs(self, registry: ModelRegistry) -> None:
        self.image = gr.Image(
            label="Image",
            type="filepath",
            image_mode=None,
            sources=["upload", "clipboard", "webcam"],
            height=320,
            render=False,
        )
        choices, value = model_choices(registry, DEMO_MODEL)
        self.model = gr.Dropdown(
            choices, value=value, label="Model", interactive=True, allow_custom_value=True, render=False
        )
        method_choices = [(method.name, key) for key, method in METHODS.items()]
        self.methods = gr.CheckboxGroup(
            method_choices, value=list(default_method_keys()), label="Methods", render=False
        )
        self.run = gr.Button("Explain", variant="primary", render=False)

    def _results(self) -> None:
        self.predictions = gr.Label(num_top_classes=TOP_CLASSES, label="Top-5 predictions", render=False)
        self.class_menu = class_menu()
        self.status = gr.Markdown(WELCOME, label="Status", render=False)
        self.overlays = {
            key: gr.Image(
                label=overlay_label(method),
                interactive=False,
                visible=method.default,
                height=OVERLAY_HEIGHT,
                min_width=160,
                elem_id=f"overlay-{key.replace('+', 'p')}",
                render=False,
            )
            for key, method in METHODS.items()
        }
        self.notes = gr.Markdown(label="Notes", visible=False, elem_id="notes", render=False)
        self.gallery = gr.Gallery(
            label=f"{explainer_method().name} maps of the top classes",
            columns=GALLERY_CLASSES,
            height=GALLERY_HEIGHT,
            allow_preview=False,
            object_fit="contain",
            visible=False,
            elem_id="gallery",
            render=False,
        )
        self.gallery_caption = gr.Markdown(label="Gallery caption", elem_id="gallery-caption", render=False)
        self.maps_file = gr.File(label="Raw maps (.npz)", interactive=False, render=False)

    def _settings(self) -> None:
        self.opacity = gr.Slider(0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Map opacity", render=False)
        self.colormap = gr.Dropdown(list(COLORMAPS), value=DEFAULT_COLORMAP, label="Colormap", render=False)
        self.gallery_classes = gr.Slider(
            1, MAX_GALLERY_CLASSES, value=GALLERY_CLASSES, step=1, label="Classes in the gallery", render=False
        )
        self.curves_button = gr.Button("Compute the curves for the explained class", render=False)
        self.deletion_plot, self.insertion_plot = (
            gr.LinePlot(x="fraction", y="probability", color="method", label=label, y_lim=[0, 1], render=False)
            for label in ("Deletion", "Insertion")
        )
        self.auc_table = gr.Markdown(label="Areas under the curves", render=False)

    @property
    def explain_outputs(self) -> list[gr.components.Component]:
        """The outputs of /explain, /explain_class and the gallery's clicks, in the API's order."""
        return [
            self.predictions,
            self.class_menu,
            *self.overlays.values(),
            self.gallery,
            self.gallery_caption,
            self.notes,
            self.maps_file,
            self.status,
        ]

    @property
    def streamed_overlays(self) -> list[gr.components.Component]:
        """The overlays of the slow methods, which show progress while the fast maps stay visible."""
        return [overlay for key, overlay in self.overlays.items() if get_method(key).streamed]


Updates = dict[gr.components.Component, Any]  # what a handler returns: component -> its new value or update


class Handlers:
    """The event handlers: user input -> ``ExplainSession`` calls -> ``{component: value}`` updates
    of their ``page``.

    Args:
        session: the models and caches.
        downloads: folder for the .npz files offered for download.
        problems: messages about model sources that could not be read, shown with the models.
        examples: the folder of the example images (``example_files``).
    """

    def __init__(
        self, session: ExplainSession, downloads: Path, problems: Sequence[str] = (), examples: Path = EXAMPLES
    ) -> None:
        self.session = session
        self.downloads = Downloads(downloads, KEPT_DOWNLOADS)
        self.page = Page(session.registry, problems)
        self.shapes, self.photos = example_files(examples)

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

    def _stream(
        self, image: CheckedImage, model_key: str, index: int, methods: list[str], progress: gr.Progress | None
    ) -> Iterator[StreamUpdate]:
        """``session.explain_stream``, its errors as Gradio's."""
        try:
            yield from self.session.explain_stream(image, model_key, index, methods, _progress_for(progress))
        except ModelUnavailable as error:
            raise gr.Error(str(error), title="Model unavailable") from error
        except MethodFailed as error:
            raise gr.Error(str(error), title="Explaining failed") from error

    # Outputs

    def _overlays(self, update: StreamUpdate, methods: Sequence[str], opacity: float, colormap: str) -> Updates:
        updates: Updates = {}
        for key, component in self.page.overlays.items():
            name = get_method(key).name
            if key not in methods:
                updates[component] = gr.Image(value=None, visible=False)
            elif key in update.unavailable:
                updates[component] = gr.Image(value=None, label=f"{name} · no explainer (see below)", visible=True)
            elif key in update.explanations:
                done = update.explanations[key]
                picture = overlay(update.analysis.picture, done.saliency, opacity, colormap)
                updates[component] = gr.Image(
                    value=picture, label=method_caption(key, done.seconds, done.blank), visible=True
                )
            else:
                label = f"{name} · computing, about {format_seconds(update.expected_seconds[key])}"
                updates[component] = gr.Image(value=None, label=label, visible=True)
        return updates

    def _gallery(self, gallery: Gallery | None, analysis: Analysis, opacity: float, colormap: str) -> Updates:
        """The gallery's maps and their caption (hidden without an explainer)."""
        if gallery is None:
            return {self.page.gallery: gr.Gallery(value=None, visible=False), self.page.gallery_caption: ""}
        items = [
            (
                overlay(analysis.picture, item.explanation.saliency, opacity, colormap),
                f"{item.class_name} · {item.probability:.1%}",
            )
            for item in gallery.items
        ]
        return {
            self.page.gallery: gr.Gallery(value=items, visible=True, selected_index=None),
            self.page.gallery_caption: gallery_caption(gallery),
        }

    def _predictions(self, analysis: Analysis, names: list[str], index: int) -> Updates:
        """The top predictions and the class menu (every class, most probable first)."""
        ranked = analysis.top(len(names))
        menu = [(f"{names[i]} · {analysis.probabilities[i]:.1%}", i) for i in ranked]
        return {
            self.page.predictions: {names[i]: float(analysis.probabilities[i]) for i in ranked[:TOP_CLASSES]},
            self.page.class_menu: gr.Dropdown(choices=menu, value=index),
        }

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
    ) -> Iterator[Updates]:
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
    ) -> Iterator[Updates]:
        """Explain another class of the same image (the explainer's map is already there)."""
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
    ) -> Iterator[Updates]:
        """Explain the class of the gallery map that was clicked, with every chosen method."""
        checked = self._image(image, warn=False)
        ranked = self._analysis(checked, model_key).top(self._gallery_size(gallery_classes))
        position = selected.index if isinstance(selected.index, int) else 0
        if not 0 <= position < len(ranked):
            raise gr.Error("That map is no longer in the gallery: press Explain again.")
        index = ranked[position]
        yield from self._explain(image, model_key, index, methods, opacity, colormap, gallery_classes, progress)

    def explain_example(self, image: FileData | str, model_key: str) -> Iterator[Updates]:
        """The default explanation of an example image (cached by Gradio)."""
        methods = default_method_keys()
        yield from self._explain(
            image, model_key, None, methods, DEFAULT_OPACITY, DEFAULT_COLORMAP, GALLERY_CLASSES, None
        )

    def explain_photo(
        self,
        example: int | None,
        current: str | None,
        methods: Sequence[str],
        opacity: float = DEFAULT_OPACITY,
        colormap: str = DEFAULT_COLORMAP,
        gallery_classes: int = GALLERY_CLASSES,
        progress: gr.Progress = PROGRESS,
    ) -> Iterator[Updates]:
        """A photo example was clicked (its index): show it, select an ImageNet model (the selected
        model if it is one, else the first ready; if none is ready, keep the selected model and say
        so) and explain the photo's top class with the chosen methods."""
        if not isinstance(example, int) or not 0 <= example < len(self.photos):
            raise gr.Error(f"There is no photo example {example!r}.")
        photo = str(self.photos[example])
        key = self.session.photo_model(current)
        notes = [] if key is not None else [PHOTOS_WITHOUT_MODEL]
        model_key = key or current or ""
        entry = self.session.registry.entries.get(model_key)
        yield {
            self.page.image: photo,
            self.page.model: gr.update(value=model_key),
            self.page.status: f"Explaining the photo with {entry.display_name if entry else model_key}…",
        }
        yield from self._explain(photo, model_key, None, methods, opacity, colormap, gallery_classes, progress, notes)

    def _explain(
        self,
        upload: FileData | str | None,
        model_key: str,
        class_choice: int | None,
        methods: Sequence[str],
        opacity: float,
        colormap: str,
        gallery_classes: int,
        progress: gr.Progress | None,
        notes: Sequence[str] = (),
    ) -> Iterator[Updates]:
        """Predict, then explain one class (the top-1 for ``class_choice`` None): the updates of
        ``Page.explain_outputs`` as each method's map arrives; ``notes`` join the session's notes."""
        methods = self._methods(methods)
        image = self._image(upload, warn=class_choice is None)
        analysis = self._analysis(image, model_key)
        index = analysis.top(1)[0] if class_choice is None else self._class_index(class_choice, analysis)
        names = self.session.class_names(model_key)
        gallery = self.session.gallery(image, model_key, self._gallery_size(gallery_classes))
        shown = {**self._predictions(analysis, names, index), **self._gallery(gallery, analysis, opacity, colormap)}
        heading = f"Explaining **{names[index]}** (class {index}) with {len(methods)} methods."
        for update in self._stream(image, model_key, index, methods, progress):
            every_note = [*update.notes, *notes]
            shown.update(
                {
                    **self._overlays(update, methods, opacity, colormap),
                    self.page.notes: gr.Markdown("\n\n".join(every_note), visible=bool(every_note)),
                }
            )
            if update.done:
                saved = self.downloads.save(model_key, image.digest, update) if update.explanations else None
                status = f"Explained **{names[index]}** (class {index}); pick another class above or in the gallery."
                yield {**shown, self.page.maps_file: str(saved) if saved else None, self.page.status: status}
            else:
                waiting = ", ".join(
                    f"{get_method(m).name} (about {format_seconds(update.expected_seconds[m])})" for m in update.pending
                )
                yield {**shown, self.page.maps_file: None, self.page.status: f"{heading} Still computing: {waiting}."}

    def reblend(
        self,
        image: FileData | str | None,
        model_key: str,
        class_index: int | None,
        methods: Sequence[str],
        opacity: float,
        colormap: str,
        gallery_classes: int = GALLERY_CLASSES,
    ) -> Updates:
        """Re-draw the overlays and the gallery from cached maps with a new opacity or colormap (no model runs)."""
        updates: Updates = {component: gr.skip() for component in [*self.page.overlays.values(), self.page.gallery]}
        if image is None or class_index is None or colormap not in COLORMAPS:
            return updates
        try:
            checked = self.session.read(uploaded_path(image))
            index = int(class_index)
        except (ImageInputError, TypeError, ValueError):
            return updates
        analysis = self.session.cached_analysis(checked, model_key)
        if analysis is None:
            return updates
        for key, component in self.page.overlays.items():
            known = self.session.cached(checked, model_key, index, key) if key in methods else None
            if known is not None:
                updates[component] = overlay(analysis.picture, known.saliency, float(opacity), colormap)
        gallery = self.session.gallery(checked, model_key, self._gallery_size(gallery_classes))
        if gallery is not None:
            updates[self.page.gallery] = self._gallery(gallery, analysis, float(opacity), colormap)[self.page.gallery]
        return updates

    def curves(
        self,
        image: FileData | str | None,
        model_key: str,
        class_index: int | None,
        methods: Sequence[str],
        progress: gr.Progress = PROGRESS,
    ) -> Updates:
        """Deletion and insertion curves of each method's map for the chosen class."""
        methods = self._methods(methods)
        checked = self._image(image, warn=False)
        analysis = self._analysis(checked, model_key)
        if class_index is None:
            raise gr.Error("Press Explain first: the curves are computed for the explained class.")
        index = self._class_index(class_index, analysis)

        def report(done: int, total: int, method: str) -> None:
            progress((done, total), desc=f"Deletion and insertion: {get_method(method).name}")

        try:
            table = self.session.curves_table(checked, model_key, index, methods, report)
        except ModelUnavailable as error:
            raise gr.Error(str(error), title="Model unavailable") from error
        except MethodFailed as error:
            raise gr.Error(str(error), title="Curves failed") from error
        return self._curves(table, methods)

    def _curves(self, table: CurvesTable, methods: Sequence[str]) -> Updates:
        """The two plots' data and the table of areas, in the order of ``methods``."""
        rows = []
        lines = ["| method | deletion AUC (lower is better) | insertion AUC (higher is better) |", "|---|---|---|"]
        for method in methods:
            name = get_method(method).name
            result = table.curves.get(method)
            if result is None:
                lines.append(f"| {name} | no explainer for this model | |")
                continue
            for curve, values in (("deletion", result.deletion), ("insertion", result.insertion)):
                rows += [
                    {"fraction": float(f), "probability": float(p), "curve": curve, "method": name}
                    for f, p in zip(result.fractions, values)
                ]
            lines.append(f"| {name} | {result.deletion_auc:.3f} | {result.insertion_auc:.3f} |")
        frame = pd.DataFrame(rows, columns=["fraction", "probability", "curve", "method"])
        return {
            self.page.deletion_plot: frame[frame.curve == "deletion"],
            self.page.insertion_plot: frame[frame.curve == "insertion"],
            self.page.auc_table: "\n".join(lines),
        }

    def refresh_models(self, current: str | None) -> Updates:
        """The model menu (ready and loading models), the status text, and whether to poll again."""
        registry = self.session.registry
        registry.retry_due_explainers()
        choices, value = model_choices(registry, current)
        return {
            self.page.model: gr.Dropdown(choices=choices, value=value),
            self.page.models_status: model_status(registry, self.page.problems),
            self.page.timer: gr.Timer(active=polling(registry)),
        }

    def models(self) -> list[dict[str, Any]]:
        """/models: each model's key, name, state, whether it has P-TAME, why not or why it is
        unavailable, and its class names by index (empty until it is loaded)."""
        return [dataclasses.asdict(listing) for listing in self.session.registry.listing()]


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
            choices.append((f"{status.display_name} {WITHOUT_EXPLAINER}", status.key))
        elif status.state == "ready":
            choices.append((status.display_name, status.key))
        elif status.state in ("waiting", "loading"):
            choices.append((f"{status.display_name} {LOADING}", status.key))
    keys = [key for _, key in choices]
    return choices, (current if current in keys else (keys[0] if keys else None))


def model_status(registry: ModelRegistry, problems: Sequence[str] = ()) -> str:
    """Markdown: each model's name, key (as the API and ``python -m ptame explain --model`` take it)
    and state, with the reason for the unavailable ones."""
    lines = []
    for status in registry.statuses():
        model = f"- **{status.display_name}** (`{status.key}`)"
        if status.state == "unavailable":
            lines.append(f"{model}: unavailable: {status.reason}")
        elif status.state == "ready" and status.explainer_problem:
            lines.append(
                f"{model}: ready with the baselines only; no {explainer_method().name} "
                f"explainer: {status.explainer_problem}"
            )
        elif status.state == "ready":
            lines.append(f"{model}: ready")
        else:
            lines.append(f"{model}: loading…")
    lines += [f"- {problem}" for problem in problems]
    return "\n".join(lines) if lines else "No model is configured."


def polling(registry: ModelRegistry) -> bool:
    """Whether an open page should ask for the models' states again (one is loading, or an
    explainer may still arrive)."""
    return registry.loading() or registry.explainers_pending()


def example_files(folder: Path = EXAMPLES) -> tuple[list[Path], list[Path]]:
    """(the shapes world's test images shapes-*.png, the photos photo-*.jpg) of an examples
    folder, by name."""
    return sorted(folder.glob("shapes-*.png")), sorted(folder.glob("photo-*.jpg"))


class FirstRender:
    """Keeps what a newly opened page shows first in step with the models' states: the model menu,
    the Models panel and whether the page polls (Gradio serves every page the config it made at
    launch, so without this each page would first show every model as it was then).

    A registry listener (``ModelRegistry.add_listener``): called on the thread that changed a
    model's status, it updates the components' values and remakes the app's config from them.
    """

    def __init__(self, demo: gr.Blocks, page: Page, registry: ModelRegistry) -> None:
        self.demo = demo
        self.page = page
        self.registry = registry
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            page = self.page
            choices, value = model_choices(self.registry, page.model.value)
            page.model.choices = choices
            page.model.value = value
            page.models_status.value = model_status(self.registry, page.problems)
            page.timer.active = polling(self.registry)
            self.demo.config = self.demo.get_config_file()  # as Gradio makes it at launch


def lay_out(page: Page) -> None:
    """Render the page's input and result components (inside a ``gr.Blocks``)."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=INPUT_SCALE, min_width=300):
            for component in (page.image, page.model, page.methods, page.run):
                component.render()
        with gr.Column(scale=RESULT_SCALE, min_width=300):
            for component in (page.predictions, page.class_menu, page.status):
                component.render()
            with gr.Row():
                for component in page.overlays.values():
                    component.render()
            for component in (page.notes, page.gallery, page.gallery_caption):
                component.render()
            with gr.Row():
                for component in (page.opacity, page.colormap, page.gallery_classes):
                    component.render()
            page.maps_file.render()
            with gr.Accordion("Deletion / insertion curves (on demand)", open=False):
                page.curves_button.render()
                with gr.Row():
                    page.deletion_plot.render()
                    page.insertion_plot.render()
                page.auc_table.render()


def add_examples(handlers: Handlers, registry: ModelRegistry, cache_examples: bool) -> None:
    """The shapes examples with the demo model (explained on a click; cached with
    ``cache_examples``) and the photos, explained on a click with an ImageNet model (inside a
    ``gr.Blocks``)."""
    page = handlers.page
    if handlers.shapes and DEMO_MODEL in registry.ready_keys():
        gr.Examples(
            [[str(path), DEMO_MODEL] for path in handlers.shapes],
            inputs=[page.image, page.model],
            outputs=page.explain_outputs,
            fn=handlers.explain_example,
            cache_examples=cache_examples,
            cache_mode="eager",
            run_on_click=True,  # uncached: explained when clicked
            preprocess=False,
            label="Shapes world (test images; every method precomputed)",
            examples_per_page=len(handlers.shapes),
        )
    if handlers.photos:
        photos = gr.Dataset(
            components=[page.image],
            samples=[[str(path)] for path in handlers.photos],
            type="index",
            label="Photos (click one to explain it with an ImageNet model)",
            samples_per_page=len(handlers.photos),
            elem_id="photos",
        )
        photos.click(
            handlers.explain_photo,
            [photos, page.model, page.methods, page.opacity, page.colormap, page.gallery_classes],
            [page.image, page.model, *page.explain_outputs],
            api_visibility="private",
            scroll_to_output=True,  # the photo and its maps are above the examples
            show_progress_on=page.streamed_overlays,
            **MODEL_WORK,
        )


def wire(handlers: Handlers) -> None:
    """Connect the page's events to the handlers, with the public API names (inside a ``gr.Blocks``)."""
    page = handlers.page
    settings = [page.opacity, page.colormap, page.gallery_classes]
    explaining = {"show_progress_on": page.streamed_overlays, **MODEL_WORK}  # the fast maps stay visible meanwhile
    outputs = page.explain_outputs
    page.run.click(
        handlers.explain, [page.image, page.model, page.methods, *settings], outputs, api_name="explain", **explaining
    )
    page.class_menu.input(
        handlers.explain_class,
        [page.image, page.model, page.class_menu, page.methods, *settings],
        outputs,
        api_name="explain_class",
        **explaining,
    )
    page.gallery.select(
        handlers.explain_gallery_class,
        [page.image, page.model, page.methods, *settings],
        outputs,
        api_visibility="private",
        **explaining,
    )
    gr.on(
        [page.opacity.release, page.colormap.input, page.gallery_classes.release],
        handlers.reblend,
        [page.image, page.model, page.class_menu, page.methods, *settings],
        [*page.overlays.values(), page.gallery],
        api_name="reblend",
        show_progress="hidden",
        concurrency_limit=4,
        preprocess=False,
    )
    page.curves_button.click(
        handlers.curves,
        [page.image, page.model, page.class_menu, page.methods],
        [page.deletion_plot, page.insertion_plot, page.auc_table],
        api_name="curves",
        **MODEL_WORK,
    )
    gr.on([], handlers.models, None, page.models_list, api_name="models", queue=False)  # the API's alone
    page.timer.tick(
        handlers.refresh_models,
        [page.model],
        [page.model, page.models_status, page.timer],
        api_visibility="private",
        show_progress="hidden",
    )


def build_demo(
    session: ExplainSession,
    problems: Sequence[str] = (),
    downloads: Path | None = None,
    cache_examples: bool = True,
    examples: Path = EXAMPLES,
) -> gr.Blocks:
    """The Gradio app of a session (not launched). A new page shows the models' states as they are
    when it opens (``FirstRender``), and follows them while one is loading.

    Args:
        session: the models and caches.
        problems: messages about model sources that could not be read, shown with the models.
        downloads: folder of the .npz downloads (default: a new temporary folder).
        cache_examples: compute the shapes examples' results at launch (as a Space does).
        examples: the folder of the example images (shapes-*.png, photo-*.jpg).
    """
    handlers = Handlers(session, downloads or temporary_folder("ptame-downloads-"), problems, examples)
    with gr.Blocks(title="P-TAME explainer", delete_cache=GRADIO_CACHE_CLEANING) as demo:
        gr.Markdown(INTRO)
        lay_out(handlers.page)
        add_examples(handlers, session.registry, cache_examples)
        with gr.Accordion("Models", open=False):
            handlers.page.models_status.render()
            handlers.page.models_list.render()
        handlers.page.timer.render()
        wire(handlers)
    first_render = FirstRender(demo, handlers.page, session.registry)
    session.registry.add_listener(first_render)
    first_render()  # the states changed since the page was made
    return demo


def classifier_entries(specs: Sequence[Sequence[str | None]]) -> list[ModelEntry]:
    """The models of --classifier NAME [--explainer SPEC] [--target-layer NAME] groups."""
    return [
        ModelEntry.from_classifier(str(classifier), explainer, target_layer)
        for classifier, explainer, target_layer in specs
    ]


def launch_options(args: argparse.Namespace) -> dict[str, Any]:
    """``launch`` keywords of the command line: --host, --port and --share as Gradio's server_name,
    server_port and share (None: Gradio's default, which reads $GRADIO_SERVER_NAME,
    $GRADIO_SERVER_PORT and $GRADIO_SHARE), with ``LAUNCH_OPTIONS``."""
    return {
        **LAUNCH_OPTIONS,
        "server_name": args.host,
        "server_port": args.port,
        "share": True if args.share else None,
    }


def main(args: argparse.Namespace) -> None:
    """Serve the app of the parsed command line until it is stopped."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        register_method_modules()  # captum's methods when captum is installed; $PTAME_METHOD_MODULES
        classifiers = classifier_entries(args.classifiers)
    except (MethodModuleError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    threads = max(1, args.threads if args.threads is not None else threads_per_lane())
    torch.set_num_threads(threads)
    registry, problems = build_registry(
        args.manifest or DEFAULT_MANIFEST,
        [*model_dirs_from_env(), *args.model_dir],
        serving_device(args.device),
        classifiers,
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
    demo = build_demo(ExplainSession(registry, lane_threads=threads), problems)
    demo.queue(**QUEUE_OPTIONS).launch(prevent_thread_lock=True, **launch_options(args))
    if not zero_gpu():
        registry.load_in_background()  # after the server is up: start-up does not share the CPU with it
    demo.block_thread()


if __name__ == "__main__":
    main(ARGUMENTS)
