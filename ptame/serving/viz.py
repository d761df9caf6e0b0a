"""Saliency overlays: colormaps (OpenCV), alpha blending, and captioned side-by-side figures."""

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
    "hot": cv2.COLORMAP_HOT,
}
DEFAULT_COLORMAP = "jet"
DEFAULT_OPACITY = 0.5
CAPTION_HEIGHT = 28  # pixels of white band above each panel of a side-by-side figure
PANEL_GAP = 8  # pixels between panels
MIN_CAPTION_SIZE = 9.0  # smallest caption font (pixels); longer captions are cut


def colorize(saliency: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Colour a saliency map.

    Args:
        saliency: (H, W) float in [0, 1] (values outside are clipped).
        colormap: a name in ``COLORMAPS``.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {sorted(COLORMAPS)}")
    if saliency.ndim != 2:
        raise ValueError(f"a saliency map is (H, W), got shape {saliency.shape}")
    levels = np.rint(np.clip(np.nan_to_num(saliency, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay(
    image: np.ndarray, saliency: np.ndarray, opacity: float = DEFAULT_OPACITY, colormap: str = DEFAULT_COLORMAP
) -> np.ndarray:
    """Blend a coloured saliency map over an image.

    Args:
        image: (H, W, 3) uint8 RGB.
        saliency: (h, w) float in [0, 1]; resized bilinearly to (H, W).
        opacity: weight of the map in [0, 1] (0: the image alone, 1: the map alone).
        colormap: a name in ``COLORMAPS``.

    Returns:
        (H, W, 3) uint8 RGB: ``(1 - opacity) * image + opacity * colour(map)``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"an image is (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    height, width = image.shape[:2]
    if saliency.shape != (height, width):
        saliency = cv2.resize(saliency.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    heat = colorize(saliency, colormap)
    return cv2.addWeighted(image, 1.0 - opacity, heat, opacity, 0.0)


def side_by_side(panels: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """Panels in one row, each with its caption above it (shrunk, then cut, to fit the panel).

    Args:
        panels: (caption, (H, W, 3) uint8 RGB image) pairs, all of the same height.

    Returns:
        (CAPTION_HEIGHT + H, total width, 3) uint8 RGB on white.
    """
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    heights = {image.shape[0] for _, image in panels}
    if len(heights) != 1:
        raise ValueError(f"panels must share one height, got {sorted(heights)}")
    height = heights.pop()
    width = sum(image.shape[1] for _, image in panels) + PANEL_GAP * (len(panels) - 1)
    figure = Image.new("RGB", (width, CAPTION_HEIGHT + height), "white")
    draw = ImageDraw.Draw(figure)
    left = 0
    for caption, image in panels:
        figure.paste(Image.fromarray(image), (left, CAPTION_HEIGHT))
        text, font = _fitted(draw, caption, image.shape[1] - 8)
        draw.text((left + 4, CAPTION_HEIGHT // 2), text, fill="black", font=font, anchor="lm")
        left += image.shape[1] + PANEL_GAP
    return np.asarray(figure)


def _fitted(draw: ImageDraw.ImageDraw, caption: str, width: int) -> tuple[str, ImageFont.FreeTypeFont]:
    """The caption and a font that fit ``width`` pixels: a smaller font first, then a cut text ("...")."""
    size = CAPTION_HEIGHT * 0.55
    font = ImageFont.load_default(size=size)
    scale = width / max(draw.textlength(caption, font=font), 1.0)
    if scale >= 1.0:
        return caption, font
    font = ImageFont.load_default(size=max(size * scale, MIN_CAPTION_SIZE))
    text = caption
    while text and draw.textlength(text if text == caption else text + "…", font=font) > width:
        text = text[:-1]
    return (text if text == caption else text + "…"), font
