"""Saving explanations: raw maps as .npz, overlays side by side as .png (atomic writes), the app's downloads."""

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ptame.loading.files import atomic_write
from ptame.serving.captions import method_caption
from ptame.serving.results import Explanation, StreamUpdate
from ptame.serving.viz import DEFAULT_COLORMAP, DEFAULT_OPACITY, overlay, side_by_side

FIGURE_PANEL_SIDE = 256  # smaller model inputs (the shapes demo's 128) are enlarged in figures


def figure(
    picture: np.ndarray,
    explanations: Sequence[Explanation],
    title: str,
    opacity: float = DEFAULT_OPACITY,
    colormap: str = DEFAULT_COLORMAP,
) -> np.ndarray:
    """The input and each method's overlay in one row, captioned.

    Args:
        picture: (S, S, 3) uint8, the model's input.
        explanations: maps (S, S) in [0, 1] of one class.
        title: caption of the input panel (e.g. the class explained).

    Returns:
        (H, W, 3) uint8 RGB; panels at least ``FIGURE_PANEL_SIDE`` pixels high.
    """
    height, width = picture.shape[:2]
    if height < FIGURE_PANEL_SIDE:
        scale = FIGURE_PANEL_SIDE / height
        picture = cv2.resize(picture, (round(width * scale), FIGURE_PANEL_SIDE), interpolation=cv2.INTER_CUBIC)
    panels = [(title, picture)]
    panels += [
        (method_caption(e.method, e.seconds, e.blank), overlay(picture, e.saliency, opacity, colormap))
        for e in explanations
    ]
    return side_by_side(panels)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a (H, W, 3) uint8 RGB array as a PNG, atomically. Returns the path."""
    return atomic_write(Path(path), lambda temporary: Image.fromarray(image).save(temporary, format="PNG"))


def save_maps(
    path: str | Path,
    picture: np.ndarray,
    explanations: Sequence[Explanation],
    class_index: int,
    class_name: str,
    model_key: str,
) -> Path:
    """Write the raw maps of one class as a compressed .npz, atomically.

    Arrays: ``image`` (S, S, 3) uint8; one (S, S) float32 map in [0, 1] per method, under its
    key ("ptame", "gradcam", ...); ``seconds_<method>`` float; ``blank_<method>`` bool (a constant
    map: no evidence at the method's layer); ``class_index`` int;
    ``class_name`` and ``model`` str.

    Returns:
        The path.
    """
    arrays: dict[str, np.ndarray] = {
        "image": picture,
        "class_index": np.array(class_index),
        "class_name": np.array(class_name),
        "model": np.array(model_key),
    }
    for explanation in explanations:
        arrays[explanation.method] = explanation.saliency.astype(np.float32)
        arrays[f"seconds_{explanation.method}"] = np.array(explanation.seconds)
        arrays[f"blank_{explanation.method}"] = np.array(explanation.blank)

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    return atomic_write(Path(path), write)


def prune_folder(folder: str | Path, keep: int, pattern: str = "*.npz") -> int:
    """Delete all but the ``keep`` most recently modified files matching ``pattern``.

    Safe beside concurrent writers: hidden files (``save_maps``'s writes in progress) are left
    alone, and a file that vanishes between listing and reading its time is skipped.

    Returns:
        How many files were deleted.
    """
    dated = []
    for path in Path(folder).glob(pattern):
        if path.name.startswith("."):
            continue
        try:
            dated.append((path.stat().st_mtime_ns, path))
        except FileNotFoundError:
            continue
    dated.sort(reverse=True)
    for _, path in dated[keep:]:
        path.unlink(missing_ok=True)
    return max(len(dated) - keep, 0)


class Downloads:
    """A folder of .npz downloads (``save_maps``), one per model, image and class; only the ``keep``
    most recent are kept.

    Args:
        folder: an existing folder.
        keep: how many files to keep (``prune_folder``).
    """

    def __init__(self, folder: str | Path, keep: int) -> None:
        self.folder = Path(folder)
        self.keep = keep

    def save(self, model_key: str, image_digest: str, result: StreamUpdate) -> Path:
        """Save a finished stream's maps as ``ptame-<model>-<digest[:12]>-class<index>.npz``, then
        delete all but the ``keep`` most recent downloads. Returns the path."""
        path = self.folder / f"ptame-{model_key}-{image_digest[:12]}-class{result.class_index}.npz"
        explanations = list(result.explanations.values())
        save_maps(path, result.analysis.picture, explanations, result.class_index, result.class_name, model_key)
        prune_folder(self.folder, self.keep)
        return path
