"""The textures world: synthetic images of one textured blob of a known class and its ground-truth mask.

Each image is ``size`` x ``size`` RGB (96 by default): a cluttered background (two random colours
blended by smooth noise, with a fine brightness grain) with 3 to 6 low-contrast distractor blobs
(plain, speckled or blotched: textures that belong to no class), and exactly one object: an
irregular blob (a random smooth radial outline, 4% to 15% of the image, at a random position)
filled with one of ``TEXTURE_CLASSES`` in two random, contrasting colours, with a random period
(4.5 to 8 pixels, and at most half the blob's equivalent radius), phase, duty cycle and a
slight turn (up to 8 degrees). Outline, size, position and colours are drawn the same way for
every class, so the class shows only in the texture inside the blob. Samples are generated on the
fly and are a pure function of (split, index, size): the split picks the seed, so the train,
validation and test images differ (``ptame.datasets.world.World.sample``).
"""

import cv2
import numpy as np

from ptame.datasets.drawing import composite, polygon_area, random_colours, smooth_noise
from ptame.datasets.world import MIN_SIZE, SPLIT_SEEDS, World, WorldImages, WorldRecipe, WorldSample, register_world  # noqa: F401

TEXTURE_CLASSES: tuple[str, ...] = (
    "horizontal stripes",
    "vertical stripes",
    "rising diagonals",
    "falling diagonals",
    "dots",
    "checkerboard",
    "rings",
    "crosshatch",
)

# The object's mask covers MIN_AREA..MAX_AREA of the image; the drawn area is aimed inside a
# slightly narrower range so that rasterisation never leaves the guaranteed one.
MIN_AREA, MAX_AREA = 0.04, 0.15
TARGET_AREA = (0.045, 0.14)

# Channel statistics of the training images (measured over the first 2000 of them at 96 x 96),
# used to normalise the inputs of the textures networks.
TEXTURES_MEAN: tuple[float, float, float] = (0.438, 0.440, 0.438)
TEXTURES_STD: tuple[float, float, float] = (0.208, 0.210, 0.207)

SUBPIXEL_BITS = 4  # cv2 drawing: vertex coordinates in 1/16 pixel
SUPERSAMPLING = 4  # blobs are filled at 4x resolution and averaged: their exact area coverage
OUTLINE_POINTS = 64  # vertices of a blob's outline
PERIOD = (4.5, 8.0)  # pixels, at 96 x 96 (scaled with the size)
MAX_TURN = np.deg2rad(8.0)  # the texture's random turn, either way
MIN_CONTRAST = 0.5  # RGB distance between the texture's two colours
MIN_LUMA_CONTRAST = 0.25  # and the difference of their brightness (Rec. 601 luma)
DISTRACTOR_CONTRAST = (0.06, 0.18)  # RGB distance between a distractor and the background under it
GRAIN_CONTRAST = 0.1  # peak-to-peak brightness of the background's fine grain
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
PIXEL_NOISE = 0.02  # standard deviation of the per-pixel noise added last


TextureSample = WorldSample  # the textures world's samples are the worlds' common record


def _random_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 3) float32 RGB in [0, 1]: any hue, saturation 0.2..1, value 0.25..1."""
    return random_colours(rng, count, (0.2, 1.0), (0.25, 1.0))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S, 3) float32 in [0, 1]: two random colours blended by smooth noise, with a fine grain."""
    colours = _random_colours(rng, 2)
    blend = np.clip(smooth_noise(rng, size, int(rng.integers(3, 6))), 0.0, 1.0)[..., None]
    grain = (smooth_noise(rng, size, max(size // 6, 2)) - 0.5) * GRAIN_CONTRAST
    return np.clip(colours[0] + blend * (colours[1] - colours[0]) + grain[..., None], 0.0, 1.0)


def _blob_outline(rng: np.random.Generator) -> np.ndarray:
    """(OUTLINE_POINTS, 2) float64: a random smooth star-shaped outline around the origin, radius 0.6..1.4.

    The radius is 1 plus harmonics 2 to 5 of random phases and amplitudes (at most 0.3 / k each).
    """
    angles = np.linspace(0.0, 2 * np.pi, OUTLINE_POINTS, endpoint=False)
    harmonics = np.arange(2, 6)
    amplitudes = rng.uniform(0.0, 0.3, harmonics.size) / harmonics
    phases = rng.uniform(0.0, 2 * np.pi, harmonics.size)
    radius = 1.0 + np.cos(np.outer(angles, harmonics) + phases) @ amplitudes
    return radius[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _place_blob(
    rng: np.random.Generator, size: int, area: float, margin: float = 1.0
) -> tuple[np.ndarray, np.ndarray, float]:
    """A random blob of ``area`` pixels at a random position, ``margin`` pixels or more inside the
    image's edge (a negative margin lets it reach that far beyond).

    Returns:
        (coverage (S, S) float32 in [0, 1], centre (2,) as (x, y) pixels, equivalent radius
        sqrt(area / pi) in pixels). Pixel centres are at integer coordinates; the blob is filled on
        a SUPERSAMPLING times finer grid and area-averaged, so a pixel's value is the share of it
        the blob covers.
    """
    unit = _blob_outline(rng)
    scale = float(np.sqrt(area / polygon_area(unit)))
    reach = scale * float(np.abs(unit).max()) + margin
    centre = rng.uniform(reach, size - reach, 2) if reach < size / 2 else np.full(2, size / 2)
    points = (unit * scale + centre) * SUPERSAMPLING + (SUPERSAMPLING - 1) / 2
    fine = np.zeros((size * SUPERSAMPLING, size * SUPERSAMPLING), np.uint8)
    cv2.fillPoly(fine, [np.round(points * (1 << SUBPIXEL_BITS)).astype(np.int32)], 255, cv2.LINE_8, SUBPIXEL_BITS)
    coverage = cv2.resize(fine, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return coverage, centre, float(np.sqrt(area / np.pi))


def _soft_step(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased inside-ness in [0, 1] of a signed distance in pixels (positive inside)."""
    return np.clip(signed_distance + 0.5, 0.0, 1.0)


def _stripes(coordinate: np.ndarray, period: float, phase: float, duty: float) -> np.ndarray:
    """1 on stripes of width ``duty * period`` across ``coordinate`` (pixels), repeating every ``period``."""
    offset = np.abs((coordinate / period + phase) % 1.0 - 0.5) * period  # distance to the stripe's middle
    return _soft_step(duty * period / 2 - offset)


def _texture(rng: np.random.Generator, name: str, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """(S, S) float32 in [0, 1]: the texture ``name`` over the whole image, for a blob at ``centre``.

    Every class draws the same random parameters: a period in PERIOD (scaled with the size, and at
    most half the blob's equivalent radius, so that at least two periods span its radius), two
    phases, a duty cycle in 0.35..0.65 (the stripes' share of the period; the dots' diameter is
    1.2 times it, the crosshatch's lines 0.4 times), a turn within MAX_TURN and the rings' centre
    (within 0.3 radius of the blob's centre).
    """
    scale = size / 96
    period = float(rng.uniform(PERIOD[0] * scale, max(PERIOD[0] * scale, min(PERIOD[1] * scale, radius / 2))))
    phases = rng.uniform(0.0, 1.0, 2)
    duty = float(rng.uniform(0.35, 0.65))
    turn = float(rng.uniform(-MAX_TURN, MAX_TURN))
    ring_centre = centre + rng.uniform(-0.3, 0.3, 2) * radius
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (x - centre[0]) * np.cos(turn) + (y - centre[1]) * np.sin(turn)  # along the rows
    v = -(x - centre[0]) * np.sin(turn) + (y - centre[1]) * np.cos(turn)  # down the columns
    rising, falling = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)  # across lines going up-right / down-right
    if name == "horizontal stripes":
        return _stripes(v, period, phases[0], duty)
    if name == "vertical stripes":
        return _stripes(u, period, phases[0], duty)
    if name == "rising diagonals":
        return _stripes(rising, period, phases[0], duty)
    if name == "falling diagonals":
        return _stripes(falling, period, phases[0], duty)
    if name == "dots":
        du = ((u / period + phases[0]) % 1.0 - 0.5) * period
        dv = ((v / period + phases[1]) % 1.0 - 0.5) * period
        return _soft_step(0.6 * duty * period - np.hypot(du, dv))
    if name == "checkerboard":
        across = 2 * _stripes(u, period, phases[0], 0.5) - 1
        down = 2 * _stripes(v, period, phases[1], 0.5) - 1
        return (across * down + 1) / 2
    if name == "rings":
        distance = np.hypot(x - ring_centre[0], y - ring_centre[1])
        return _stripes(distance, period, phases[0], duty)
    if name == "crosshatch":
        width = 0.4 * duty
        return np.maximum(_stripes(rising, period, phases[0], width), _stripes(falling, period, phases[1], width))
    raise ValueError(f"unknown texture {name!r}: expected one of {TEXTURE_CLASSES}")


def _contrasting_colour(rng: np.random.Generator, other: np.ndarray) -> np.ndarray:
    """(3,) float32: the first of 16 random colours at least MIN_CONTRAST from ``other`` (3,) and
    MIN_LUMA_CONTRAST brighter or darker (if none is, the one of the most different brightness)."""
    candidates = _random_colours(rng, 16)
    distances = np.linalg.norm(candidates - other, axis=1)
    luma = np.abs((candidates - other) @ LUMA)
    far_enough = np.flatnonzero((distances >= MIN_CONTRAST) & (luma >= MIN_LUMA_CONTRAST))
    return candidates[far_enough[0] if far_enough.size else int(luma.argmax())]


def _draw_distractors(rng: np.random.Generator, image: np.ndarray) -> None:
    """Paint 3-6 low-contrast distractor blobs (0.5% to 3% of the image each) on ``image`` (S, S, 3), in place.

    Each is the background's mean colour under it, shifted by DISTRACTOR_CONTRAST, filled plainly,
    with speckles (pixel-scale noise) or with blotches (noise smooth over a few pixels): textures
    with no period or orientation, so of no class.
    """
    size = image.shape[0]
    for _ in range(int(rng.integers(3, 7))):
        coverage, _, _ = _place_blob(rng, size, rng.uniform(0.005, 0.03) * size * size, margin=-2.0)
        under = np.tensordot(coverage / coverage.sum(), image, axes=([0, 1], [0, 1]))
        shift = rng.standard_normal(3).astype(np.float32)
        colour = under + shift / np.linalg.norm(shift) * rng.uniform(*DISTRACTOR_CONTRAST)
        kind = int(rng.integers(3))
        if kind == 0:
            pattern = np.zeros((size, size), np.float32)
        elif kind == 1:
            pattern = rng.random((size, size), dtype=np.float32) - 0.5
        else:
            pattern = smooth_noise(rng, size, max(size // 4, 2)) - 0.5
        fill = colour + 0.15 * pattern[..., None]
        composite(image, coverage, np.clip(fill, 0.0, 1.0))


def draw_textures(rng: np.random.Generator, name: str, size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One image of the textures world (``ptame.datasets.world.Draw``; the same drawing in
    every split, which only seeds the generator): a background with
    distractors, then a blob filled with the texture ``name`` in two contrasting colours, then pixel noise.

    Returns:
        (image (S, S, 3) float32, unclipped; the blob's coverage (S, S) float32 in [0, 1]).
    """
    image = _background(rng, size)
    _draw_distractors(rng, image)
    alpha, centre, radius = _place_blob(rng, size, rng.uniform(*TARGET_AREA) * size * size)
    first = _random_colours(rng, 1)[0]
    second = _contrasting_colour(rng, first)
    pattern = _texture(rng, name, size, centre, radius)
    composite(image, alpha, first + pattern[..., None] * (second - first))
    image += PIXEL_NOISE * rng.standard_normal(image.shape, dtype=np.float32)
    return image, alpha


# The networks, both unlike the shapes world's ResNet-10-T: the classifier a RegNetX-200MF of
# reduced widths (16, 40, 96, 248 channels), the auxiliary network a MobileNetV3-Small at half
# width (layers 1-4: 8, 16, 24, 288 channels); both have feature levels 1-4 at strides 4, 8, 16,
# 32. All steps are at full size: downsampling would blur the finest textures (4.5-pixel periods)
# away. No explainer: the textures networks are for ``python -m train explainer`` runs.
TEXTURES_RECIPE = WorldRecipe(
    classifier="regnetx_002",
    classifier_args={"w0": 16, "wa": 24.0, "wm": 2.49},
    classifier_schedule=((96, 900),),
    auxiliary="mobilenetv3_small_050",
    auxiliary_schedule=((96, 900),),
    command="python -m train textures",
)
TEXTURES = register_world(
    World("textures", TEXTURE_CLASSES, 96, TEXTURES_MEAN, TEXTURES_STD, draw_textures, TEXTURES_RECIPE, __name__)
)


def textures_sample(index: int, split: str = "test", size: int = 96) -> WorldSample:
    """The ``index``-th image of a split of the textures world (``World.sample``): pixels (3, S, S)
    float32 in [0, 1], label (``index % len(TEXTURE_CLASSES)``), mask (S, S) bool covering 4% to
    15% of the image."""
    return TEXTURES.sample(index, split, size)


class TexturesDataset(WorldImages):
    """``length`` consecutive images of a split of the textures world, from index ``start``."""

    def __init__(self, split: str, length: int, size: int = 96, start: int = 0) -> None:
        super().__init__(TEXTURES, split, length, size, start)
