"""The shapes world: synthetic images with one object of a known class and its ground-truth mask.

Each image is ``size`` x ``size`` RGB: a textured two-colour background, clutter that belongs to
no class (thin strokes, open arcs, small elongated blobs, in the objects' colours), and exactly one
object of one of ``SHAPE_CLASSES`` with a random size (3% to 12% of the image), rotation and
position, drawn on top in two random colours: the object, and inside it its inset (the same shape,
shrunk), so that the object's class shows inside it as well as on its outline. Samples are
generated on the fly and are a pure function of (split, index, size): the split picks the seed, so
the train, validation and test images differ (``ptame.datasets.world.World.sample``).
"""

import cv2
import numpy as np

from ptame.datasets.drawing import composite, polygon_area, random_colours, smooth_noise
from ptame.datasets.world import MIN_SIZE, SPLIT_SEEDS, World, WorldImages, WorldRecipe, WorldSample, register_world  # noqa: F401

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "semicircle")

# The object's mask covers MIN_AREA..MAX_AREA of the image; the drawn area is aimed inside a
# slightly narrower range so that rasterisation (a fraction of a pixel along the outline) never
# leaves the guaranteed one.
MIN_AREA, MAX_AREA = 0.03, 0.12
TARGET_AREA = (0.035, 0.11)

# Channel statistics of the training images (measured over 2000 of them at 128 x 128), used to
# normalise the inputs of the shapes classifiers.
SHAPES_MEAN: tuple[float, float, float] = (0.447, 0.448, 0.448)
SHAPES_STD: tuple[float, float, float] = (0.214, 0.214, 0.214)

SUBPIXEL_BITS = 4  # cv2 drawing: vertex coordinates in 1/16 pixel
SUPERSAMPLING = 4  # the object is filled at 4x resolution and averaged: its exact area coverage
MIN_CONTRAST = 0.4  # RGB distance between the object and the background it lies on
TEXTURE_CONTRAST = 0.1  # peak-to-peak brightness of the background's fine texture
PIXEL_NOISE = 0.03  # standard deviation of the per-pixel noise added last
INSET_DEPTH = 0.45  # the inset's outline lies this share of the largest inscribed radius inside


ShapeSample = WorldSample  # the shapes world's samples are the worlds' common record


def _regular_polygon(corners: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + np.arange(corners) * 2 * np.pi / corners
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    outer = _regular_polygon(5, 1.0, -np.pi / 2)
    inner = _regular_polygon(5, 0.45, -np.pi / 2 + np.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(10, 2)


def _cross(half_width: float = 0.3) -> np.ndarray:
    w = half_width
    quarter = np.array([[1.0, -w], [1.0, w], [w, w]])
    turns = [np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) for a in np.arange(4) * np.pi / 2]
    return np.concatenate([quarter @ turn.T for turn in turns])


def _semicircle(segments: int = 32) -> np.ndarray:
    angles = np.linspace(0.0, np.pi, segments + 1)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


# Each class as its outline, inside the unit circle; and its area at radius 1. Every object is
# solid (no class has a hole): its mask is where its evidence is, so a map that points at the
# evidence points at the mask. A ring, an earlier sixth class, is told from a circle by its hole,
# which is background and outside its mask (README, The shapes world).
OUTLINES: dict[str, np.ndarray] = {
    "circle": _regular_polygon(64),
    "square": _regular_polygon(4, 1.0, np.pi / 4),
    "triangle": _regular_polygon(3, 1.0, -np.pi / 2),
    "star": _star(),
    "cross": _cross(),
    "semicircle": _semicircle(),
}
UNIT_AREAS: dict[str, float] = {name: polygon_area(outline) for name, outline in OUTLINES.items()}


def _random_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 3) float32 RGB in [0, 1]: any hue, saturation 0.35..1, value 0.35..1."""
    return random_colours(rng, count, (0.35, 1.0), (0.35, 1.0))


def _fixed(points: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> cv2's fixed-point int32 vertices (SUBPIXEL_BITS fractional bits)."""
    return np.round(points * (1 << SUBPIXEL_BITS)).astype(np.int32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S, 3) uint8: two random colours blended by smooth noise, with a finer brightness texture."""
    colours = _random_colours(rng, 2)
    blend = np.clip(smooth_noise(rng, size, 4), 0.0, 1.0)[..., None]
    texture = (smooth_noise(rng, size, max(size // 8, 2)) - 0.5) * TEXTURE_CONTRAST
    image = colours[0] + blend * (colours[1] - colours[0]) + texture[..., None]
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _draw_clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Draw 2-4 thin strokes, 0-2 thin open arcs and 1-3 small elongated blobs in random colours on
    ``image`` ((S, S, 3) uint8), in place, anti-aliased."""
    size = image.shape[0]
    scale = size / 128
    thickness = max(1, round(scale))
    strokes, arcs, blobs = int(rng.integers(2, 5)), int(rng.integers(0, 3)), int(rng.integers(1, 4))
    colours = [tuple(int(v) for v in colour) for colour in np.round(_random_colours(rng, strokes + arcs + blobs) * 255)]
    for colour in colours[:strokes]:
        points = _fixed(rng.uniform(0, size, (int(rng.integers(2, 4)), 2)))
        cv2.polylines(image, [points], False, colour, thickness, cv2.LINE_AA, SUBPIXEL_BITS)
    for colour in colours[strokes : strokes + arcs]:
        centre = tuple(int(v) for v in rng.uniform(0, size, 2))
        radius = max(2, round(rng.uniform(5, 12) * scale))
        start = float(rng.uniform(0, 360))
        sweep = float(rng.uniform(60, 200))
        cv2.ellipse(image, centre, (radius, radius), 0.0, start, start + sweep, colour, thickness, cv2.LINE_AA)
    for colour in colours[strokes + arcs :]:
        centre = tuple(int(v) for v in rng.uniform(0, size, 2))
        length = rng.uniform(3, 8) * scale
        axes = (max(2, round(length)), max(1, round(length * rng.uniform(0.2, 0.45))))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(image, centre, axes, angle, 0.0, 360.0, colour, -1, cv2.LINE_AA)


def _object_coverage(rng: np.random.Generator, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of one object, randomly sized, turned and placed, and of its inset.

    Pixel centres are at integer coordinates; the object is filled on a SUPERSAMPLING times finer
    grid and area-averaged, so a pixel's value is the share of it the object covers. The inset is
    the object shrunk by INSET_DEPTH of its largest inscribed radius: the same shape, inside it.

    Returns:
        (object, inset), each (S, S) float32 in [0, 1]; the inset is inside the object.
    """
    area = rng.uniform(*TARGET_AREA) * size * size
    radius = float(np.sqrt(area / UNIT_AREAS[name]))
    turn = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    margin = radius + 2
    centre = rng.uniform(margin, size - margin, 2)
    outline = OUTLINES[name]

    def place(points: np.ndarray) -> np.ndarray:
        return _fixed((points @ rotation.T * radius + centre) * SUPERSAMPLING + (SUPERSAMPLING - 1) / 2)

    fine = np.zeros((size * SUPERSAMPLING, size * SUPERSAMPLING), np.uint8)
    cv2.fillPoly(fine, [place(outline)], 255, cv2.LINE_8, SUBPIXEL_BITS)
    depth = cv2.distanceTransform(fine, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    inset = np.where(depth > INSET_DEPTH * depth.max(), np.uint8(255), np.uint8(0))

    def area_averaged(layer: np.ndarray) -> np.ndarray:
        return cv2.resize(layer, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0

    return area_averaged(fine), area_averaged(inset)


def _mean_colour(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(3,) float32: the mean colour of ``image`` (S, S, 3) under the coverage ``alpha`` (S, S)."""
    return np.tensordot(alpha / alpha.sum(), image, axes=([0, 1], [0, 1]))


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """(3,) float32: the first of 16 random colours at least MIN_CONTRAST from ``under`` (3,) (the
    most distant one if none is)."""
    candidates = _random_colours(rng, 16)
    distances = np.linalg.norm(candidates - under, axis=1)
    far_enough = np.flatnonzero(distances >= MIN_CONTRAST)
    return candidates[far_enough[0] if far_enough.size else int(distances.argmax())]


def draw_shapes(rng: np.random.Generator, name: str, size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One image of the shapes world (``ptame.datasets.world.Draw``; the same drawing in
    every split, which only seeds the generator): a cluttered background, then
    the object ``name`` and its inset in two contrasting colours, then pixel noise.

    Returns:
        (image (S, S, 3) float32, unclipped; the object's coverage (S, S) float32 in [0, 1]).
    """
    clutter = _background(rng, size)
    _draw_clutter(rng, clutter)
    image = clutter.astype(np.float32) / 255.0
    alpha, inset = _object_coverage(rng, name, size)
    colour = _contrasting_colour(rng, _mean_colour(image, alpha))
    composite(image, alpha, colour)
    composite(image, inset, _contrasting_colour(rng, colour))
    image += PIXEL_NOISE * rng.standard_normal(image.shape, dtype=np.float32)
    return image, alpha


# The networks: both ResNet-10-T with a 16-channel stem, of different widths (the classifier half
# the standard width, the auxiliary network a quarter; layer1..layer4 at strides 4, 8, 16, 32). They
# follow a resolution schedule: 64 pixels first (progressive resizing), which is 4x cheaper and gets
# a randomly initialised network past its first plateau far sooner than at full size, then 128.
# Measured on one-colour objects (before the inset): without the masked views and the black image,
# the classifier called an all-black image a triangle (p 0.64), so an empty map "explained" every
# triangle; P-TAME's pointing game was 0.57, with them 0.70. The cut-outs teach it that an
# object-shaped hole is no object: its evidence is the object's own pixels, not the background
# around the outline (with the explainer's recipe unchanged: AD 50% 8.8 -> 4.4, pointing 0.70 ->
# 0.72). The explainer's area weight is 4 (pointing 0.72 at 1, 0.74 at 2, 0.75 at 4, 0.73 at 8; on
# two-colour objects with a ring class 0.84 at 4 and 0.85 at 8; the committed run, on solid shapes
# only, 0.98 at 4; README, The shapes world).
SHAPES_RECIPE = WorldRecipe(
    classifier="resnet10t",
    classifier_args={"channels": (32, 64, 128, 256), "stem_width": 16},
    classifier_schedule=((64, 1500), (128, 600)),
    auxiliary="resnet10t",
    auxiliary_args={"channels": (16, 32, 64, 128), "stem_width": 16},
    auxiliary_schedule=((64, 900), (128, 300)),
    explainer_steps=800,
    out="checkpoints/shapes",
    command="python -m train shapes",
    roles={
        "classifier": "The classifier that the shapes demo explains. Besides the images themselves, it learnt from "
        "masked views of {masked_share:.0%} of them (the object kept, the rest partly black), "
        "from {cutout_share:.0%} of them again with the object cut out and from an all-black image, "
        "both with a uniform target, so that it reads the masked images that perturbation methods show "
        "it (an object on black is its class; black, or an object-shaped hole, is no class).",
        "auxiliary": "The auxiliary network of the shapes explainer: a feature extractor only (layers 1-4).",
    },
)
SHAPES = register_world(
    World("shapes", SHAPE_CLASSES, 128, SHAPES_MEAN, SHAPES_STD, draw_shapes, SHAPES_RECIPE, __name__)
)


def shapes_sample(index: int, split: str = "test", size: int = 128) -> WorldSample:
    """The ``index``-th image of a split of the shapes world (``World.sample``): pixels (3, S, S)
    float32 in [0, 1], label (``index % len(SHAPE_CLASSES)``), mask (S, S) bool covering 3% to 12%
    of the image."""
    return SHAPES.sample(index, split, size)


class ShapesDataset(WorldImages):
    """``length`` consecutive images of a split of the shapes world, from index ``start``."""

    def __init__(self, split: str, length: int, size: int = 128, start: int = 0) -> None:
        super().__init__(SHAPES, split, length, size, start)
