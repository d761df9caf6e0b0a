"""Text for people: durations, unique class names, the captions of a method's map and of a gallery, why a model has no
P-TAME map, and whether an image is from a model's world."""

import math

from ptame.methods import explainer_method, get_method
from ptame.serving.loader import LoadedModel
from ptame.serving.manifest import ModelEntry
from ptame.serving.reasons import visitor_text
from ptame.serving.results import Gallery


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


def method_caption(method: str, seconds: float, blank: bool = False) -> str:
    """ "P-TAME · 12 ms": a method's display name and its compute time ("· blank map" after a
    constant map)."""
    return f"{get_method(method).name} · {format_seconds(seconds)}" + (" · blank map" if blank else "")


def blank_map_note(method: str, target_layer: str) -> str:
    """Why a method's map is blank (constant), and what to try: plain text, no Markdown."""
    name = get_method(method).name
    if get_method(method).uses_explainer:
        return f"The {name} map is blank (constant): the explainer sees no evidence for this class in this image."
    layer = f"its target layer {target_layer}" if target_layer else "its target layer"
    return (
        f"The {name} map is blank (constant): no positive evidence for this class at {layer} "
        "(zero gradients, a saturated classifier, or a layer that does not see the class). "
        "Another layer may show it: --target-layer NAME (app, ptame explain, python -m train explainer)."
    )


def explainer_missing_message(model: LoadedModel, visitor: bool = True) -> str:
    """Plain text (no Markdown) on why a model has no P-TAME map, and the commands that give it one.

    visitor: an app's visitor reads it, so a path of the server's disk is cut to its last part
    (``ptame.serving.reasons.visitor_text``); False: the operator's own command line, whole.
    """
    entry = model.entry
    problem = model.explainer_problem or "it is not loaded"
    message = (
        f"No {explainer_method().name} map for {entry.display_name}: {problem.rstrip('.')}. "
        f"Train one for this classifier with `python -m train explainer --classifier {entry.classifier} "
        f"--data IMAGE_FOLDER --out runs/{entry.key}` (any folder of its kind of images; labels are not read), "
        f"then start the app with `--classifier {entry.classifier} --explainer runs/{entry.key}/explainer`."
    )
    return visitor_text(message) if visitor else message


def domain_note(entry: ModelEntry, image_size: tuple[int, int]) -> str | None:
    """A warning when an image is not from the model's world, else None.

    Args:
        entry: the model; only one with ``image_size`` set is ever warned about.
        image_size: the image's (width, height) in pixels.

    Returns:
        None unless ``entry.image_size`` is set and the image is not exactly that square size.
    """
    side = entry.image_size
    if side is None or tuple(image_size) == (side, side):
        return None
    width, height = image_size
    domain = entry.domain or f"{side}x{side} images"
    return (
        f"The {entry.display_name} knows only {domain}. This {width}x{height} image is not from its world: "
        "the prediction and the maps say little about it."
    )


def gallery_caption(gallery: Gallery) -> str:
    """What a gallery shows and what its one pass saved: the time its baseline would take."""
    name, reference = get_method(gallery.method).name, get_method(gallery.reference).name
    return (
        f"{name}: these {len(gallery.items)} maps in {format_seconds(gallery.seconds)}, from one pass that mapped "
        f"all {gallery.classes} classes; {reference} would take about {format_seconds(gallery.reference_seconds)} "
        "for them (one forward and one backward pass per class). Click a map to explain its class with every method."
    )
