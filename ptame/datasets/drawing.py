"""Drawing helpers shared by the generated worlds (ptame.datasets.shapes, ptame.datasets.textures)."""

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) float32 noise, smooth over ``size / cells`` pixels, roughly in [0, 1]."""
    coarse = rng.random((cells, cells), dtype=np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def polygon_area(points: np.ndarray) -> float:
    """The area of a simple polygon, (n, 2) vertices in order (the shoelace formula)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def random_colours(
    rng: np.random.Generator, count: int, saturation: tuple[float, float], value: tuple[float, float]
) -> np.ndarray:
    """(count, 3) float32 RGB in [0, 1]: any hue, saturation and value uniform in their ranges."""
    hsv = np.stack(
        [rng.uniform(0, 360, count), rng.uniform(*saturation, count), rng.uniform(*value, count)], axis=1
    ).astype(np.float32)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def composite(image: np.ndarray, alpha: np.ndarray, fill: np.ndarray) -> None:
    """Paint ``fill`` ((3,) or (S, S, 3)) over ``image`` (S, S, 3) in place with coverage ``alpha`` (S, S)."""
    image += alpha[..., None] * (fill - image)
