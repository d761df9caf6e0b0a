"""The objects world: real photographed objects, each with its exact mask, pasted on real photographs.

Each image is ``size`` x ``size`` RGB (224 by default): a random square crop of a photograph
(``BACKGROUNDS``, KDE Plasma's photographed wallpapers), randomly flipped, with 1 to 3 stamps of
different ImageNet classes on it (``STAMPS``, Tux Paint's photographed cut-outs): each at a random
scale, position and flip, pasted in a random order, so that a later one may partly cover an earlier
one. Each object's mask is its stamp's alpha, less what later stamps cover; every object keeps at
least ``MIN_VISIBLE`` of its area in view. The labelled object (``World.sample``'s label) is one of
them; ``WorldSample.objects`` holds every object's ImageNet class and mask.

``STAMPS`` is a reviewed table: each stamp's ImageNet class and its split. A stamp is in it when
EfficientNet-Lite0 (``ptame.efficientnet_lite0``), shown the stamp alone on grey, gives it a top-1
class with a probability of at least 0.3 and that class names what the photograph shows (a
pig -> "hog", a cow -> "ox", a rabbit -> "hare"); a stamp that the network names wrongly (a bee ->
"fly", a banana -> "nematode") or by a neighbour's name only (a grasshopper -> "cricket") is left
out. Splits are by stamp file and by background: no stamp and no background is in both the
training and the held-out images. A class with two or more stamps keeps one for the held-out
images (validation and test), so every held-out class was also seen in training; the classes with
one stamp are in the training images only. A mirrored copy of a stamp (``*_mirror.png``) is the
same photograph and would be in the same split; none is in the table.

The files are fetched by the command that needs them (``ptame.datasets.debian_files``) and never
committed: ``$PTAME_OBJECTS_STAMPS`` may name a folder laid out as the package's
``usr/share/tuxpaint/stamps`` and ``$PTAME_OBJECTS_BACKGROUNDS`` one laid out as
``usr/share/wallpapers`` (``NAME/contents/images/WIDTHxHEIGHT.jpg``), instead of the packages.

Samples are a pure function of (split, index, size) and the files: ``World.sample`` seeds the
generator from (split, index).
"""

import functools
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ptame.datasets.debian_files import package_folder
from ptame.datasets.world import SPLIT_SEEDS, World, register_world
from ptame.errors import DataUnavailable
from ptame.loading.backbones import imagenet_class_names

STAMPS_PACKAGE = "tuxpaint-stamps-default"
STAMPS_PATH = "usr/share/tuxpaint/stamps"
STAMPS_ENV = "PTAME_OBJECTS_STAMPS"
BACKGROUNDS_PACKAGE = "plasma-workspace-wallpapers"
BACKGROUNDS_PATH = "usr/share/wallpapers"
BACKGROUNDS_ENV = "PTAME_OBJECTS_BACKGROUNDS"

TRAIN, HELD_OUT = "train", "held-out"  # the stamps' and backgrounds' splits; held-out: validation and test

# stamp (relative to the stamps folder) -> (ImageNet class index, split). Reviewed: see the module
# docstring. EfficientNet-Lite0's probability for the class on the stamp alone is in the comment.
STAMPS: dict[str, tuple[int, str]] = {
    "animals/amphibians/frog.png": (30, TRAIN),  # bullfrog 0.64
    "animals/birds/chicken_profile.png": (8, TRAIN),  # hen 0.64
    "animals/birds/hen.png": (8, HELD_OUT),  # hen 0.76
    "animals/birds/crowned_crane.png": (134, TRAIN),  # crane 0.79
    "animals/birds/duck.png": (97, TRAIN),  # drake 0.99
    "animals/birds/gander.png": (99, TRAIN),  # goose 0.97
    "animals/birds/penguin.png": (145, TRAIN),  # king penguin 0.97
    "animals/birds/magellanic_penguin.png": (145, HELD_OUT),  # king penguin 0.61
    "animals/birds/magpie.png": (18, TRAIN),  # magpie 0.41
    "animals/birds/pink_flamingo.png": (130, TRAIN),  # flamingo 0.97
    "animals/birds/rainbow-lorikeet.png": (90, TRAIN),  # lorikeet 0.54
    "animals/birds/rooster.png": (7, TRAIN),  # cock 0.71
    "animals/birds/tucan.png": (96, TRAIN),  # toucan 0.79
    "animals/birds/vulture.png": (23, TRAIN),  # vulture 0.58
    "animals/fish/lobster.png": (123, TRAIN),  # spiny lobster 0.57
    "animals/insects/Brown_slug.png": (114, TRAIN),  # slug 0.98
    "animals/insects/Woodlouse.png": (126, TRAIN),  # isopod 0.95
    "animals/insects/mantis.png": (315, TRAIN),  # mantis 0.93
    "animals/mammals/apes/gorilla.png": (366, TRAIN),  # gorilla 0.88
    "animals/mammals/aquatic/orca.png": (148, TRAIN),  # killer whale 0.41
    "animals/mammals/aquatic/otter.png": (360, TRAIN),  # otter 0.97
    "animals/mammals/aquatic/sea_lion.png": (150, TRAIN),  # sea lion 0.98
    "animals/mammals/badger.png": (362, TRAIN),  # badger 0.98
    "animals/mammals/bears/european-bear.png": (294, TRAIN),  # brown bear 0.95
    "animals/mammals/bears/bear.png": (294, HELD_OUT),  # brown bear 0.72
    "animals/mammals/bears/toys/edward_bear.png": (850, TRAIN),  # teddy 0.62
    "animals/mammals/bovines/bison.png": (347, TRAIN),  # bison 0.72
    "animals/mammals/bovines/bull.png": (345, TRAIN),  # ox 0.67
    "animals/mammals/bovines/cow.png": (345, HELD_OUT),  # ox 0.34
    "animals/mammals/bovines/indian_blackbuck.png": (353, TRAIN),  # gazelle 0.65
    "animals/mammals/bovines/sheep.png": (348, TRAIN),  # ram 0.64
    "animals/mammals/bovines/ram.png": (348, HELD_OUT),  # ram 0.65
    "animals/mammals/camel/camel.png": (354, TRAIN),  # Arabian camel 0.99
    "animals/mammals/camel/dromedary.png": (354, HELD_OUT),  # Arabian camel 0.75
    "animals/mammals/cats/lion.png": (291, TRAIN),  # lion 0.83
    "animals/mammals/cats/tiger.png": (292, TRAIN),  # tiger 0.67
    "animals/mammals/cats/tiger_sumatran.png": (292, HELD_OUT),  # tiger 0.78
    "animals/mammals/dogs/dingo.png": (273, TRAIN),  # dingo 0.70
    "animals/mammals/echidna.png": (102, TRAIN),  # echidna 0.59
    "animals/mammals/elephant.png": (386, TRAIN),  # African elephant 0.52
    "animals/mammals/equines/zebra.png": (340, TRAIN),  # zebra 0.97
    "animals/mammals/ferret.png": (359, TRAIN),  # black-footed ferret 0.46
    "animals/mammals/hippopotamus.png": (344, TRAIN),  # hippopotamus 0.57
    "animals/mammals/pig.png": (341, TRAIN),  # hog 0.78
    "animals/mammals/pig_golden2.png": (341, TRAIN),  # hog 0.69
    "animals/mammals/pig_golden.png": (341, HELD_OUT),  # hog 0.87
    "animals/mammals/rabbit_little.png": (331, TRAIN),  # hare 0.57
    "animals/mammals/rodents/rabbit.png": (331, TRAIN),  # hare 0.93
    "animals/mammals/rodents/rabbit-2.png": (331, HELD_OUT),  # hare 0.62
    "animals/mammals/rodents/beaver.png": (337, TRAIN),  # beaver 0.95
    "animals/mammals/rodents/marmot.png": (336, TRAIN),  # marmot 0.62
    "animals/mammals/rodents/squirrel.png": (335, TRAIN),  # fox squirrel 0.98
    "animals/mammals/wildboar.png": (342, TRAIN),  # wild boar 0.51
    "animals/marsupials/koala.png": (105, TRAIN),  # koala 0.64
    "animals/marsupials/wombat.png": (106, TRAIN),  # wombat 0.61
    "clothes/hats/sombrero.png": (808, TRAIN),  # sombrero 0.49
    "clothes/t_poloshirt.png": (610, TRAIN),  # jersey 0.35
    "food/fruit/strawberry.png": (949, TRAIN),  # strawberry 0.84
    "food/fruit/Strawberry2.png": (949, HELD_OUT),  # strawberry 0.85
    "food/fruit/apple_granny_smith.png": (948, TRAIN),  # Granny Smith 0.95
    "food/fruit/apple_green.png": (948, HELD_OUT),  # Granny Smith 0.92
    "food/fruit/cherimoya.png": (956, TRAIN),  # custard apple 0.96
    "food/fruit/lemon.png": (951, TRAIN),  # lemon 0.95
    "food/fruit/orange.png": (950, TRAIN),  # orange 0.48
    "food/fruit/mandarine.png": (950, HELD_OUT),  # orange 0.71
    "food/fruit/pineapple.png": (953, TRAIN),  # pineapple 0.64
    "food/vegetables/broccoli.png": (937, TRAIN),  # broccoli 0.97
    "food/vegetables/corn.png": (998, TRAIN),  # ear 0.66
    "food/vegetables/pepper.png": (945, TRAIN),  # bell pepper 0.96
    "food/vegetables/yellowpepper.png": (945, HELD_OUT),  # bell pepper 0.87
    "hobbies/binoculars.png": (447, TRAIN),  # binoculars 0.99
    "hobbies/camera_35mm.png": (759, TRAIN),  # reflex camera 0.89
    "hobbies/music/brass/trumpet.png": (513, TRAIN),  # cornet 0.94
    "hobbies/music/percussion/drumkit.png": (541, TRAIN),  # drum 0.58
    "hobbies/music/percussion/drum_tomtom_floor.png": (541, HELD_OUT),  # drum 0.77
    "hobbies/music/string/cello.png": (486, TRAIN),  # cello 0.53
    "hobbies/music/string/guitar_electric.png": (546, TRAIN),  # electric guitar 0.87
    "hobbies/music/string/guitar2.png": (546, TRAIN),  # electric guitar 0.62
    "hobbies/music/string/guitar_electric_bass.png": (546, HELD_OUT),  # electric guitar 0.33
    "hobbies/music/string/guitar_classical.png": (402, TRAIN),  # acoustic guitar 0.51
    "hobbies/music/string/violin.png": (889, TRAIN),  # violin 0.60
    "hobbies/music/wind/bassoon.png": (432, TRAIN),  # bassoon 0.72
    "household/dishes/mug.png": (504, TRAIN),  # coffee mug 0.34
    "household/dishes/pitcher_small.png": (899, TRAIN),  # water jug 0.73
    "household/dishes/teapot.png": (849, TRAIN),  # teapot 0.40
    "household/toilet.png": (861, TRAIN),  # toilet seat 0.92
    "household/wheelie_bin.png": (412, TRAIN),  # ashcan 0.68
    "medical/bandage_adhesive.png": (419, TRAIN),  # Band Aid 1.00
    "medical/stethoscope.png": (823, TRAIN),  # stethoscope 0.91
    "medical/syringe.png": (845, TRAIN),  # syringe 0.71
    "military/paratrooper.png": (701, TRAIN),  # parachute 0.95
    "military/vehicles/bradley.png": (847, TRAIN),  # tank 0.95
    "military/vehicles/f22_raptor.png": (895, TRAIN),  # warplane 0.48
    "military/ammunition/old_naval_shell.png": (744, TRAIN),  # projectile 0.43
    "plants/mushrooms/cep.png": (997, TRAIN),  # bolete 0.74
    "plants/mushrooms/cep-1.png": (997, TRAIN),  # bolete 0.88
    "plants/mushrooms/cep-2.png": (997, HELD_OUT),  # bolete 0.93
    "sports/basketball.png": (430, TRAIN),  # basketball 1.00
    "sports/soccer.png": (805, TRAIN),  # soccer ball 0.57
    "sports/tennis_ball.png": (852, TRAIN),  # tennis ball 0.77
    "sports/tennis_racket.png": (752, TRAIN),  # racket 0.84
    "town/roadsigns/toilets.png": (919, TRAIN),  # street sign 0.52
    "town/roadsigns/school_sign.png": (919, HELD_OUT),  # street sign 0.32
    "town/uk_post_box.png": (637, TRAIN),  # mailbox 0.35
    "vehicles/7spoke256.png": (479, TRAIN),  # car wheel 0.42
    "vehicles/cycle/pink_tricycle.png": (870, TRAIN),  # tricycle 1.00
    "vehicles/emergency/firetruck.png": (555, TRAIN),  # fire engine 0.94
    "vehicles/flight/balloon360.png": (417, TRAIN),  # balloon 0.84
    "vehicles/flight/planes/747.png": (404, TRAIN),  # airliner 0.55
    "vehicles/garbagetruck.png": (569, TRAIN),  # garbage truck 0.65
    "vehicles/masstransit/green_korean_bus.png": (654, TRAIN),  # minibus 0.83
    "vehicles/wheel_tractor.png": (866, TRAIN),  # tractor 0.41
}

# Photographs of plasma-workspace-wallpapers (their metadata.json: LGPL-3 or CC-BY-SA-4.0), by
# wallpaper folder, with their split. Its drawn and abstract wallpapers are left out.
BACKGROUNDS: dict[str, str] = {
    "Autumn": TRAIN,
    "BytheWater": TRAIN,
    "ColorfulCups": TRAIN,
    "DarkestHour": TRAIN,
    "FallenLeaf": TRAIN,
    "Kite": TRAIN,
    "OneStandsOut": TRAIN,
    "Path": TRAIN,
    "Volna": TRAIN,
    "ColdRipple": HELD_OUT,
    "EveningGlow": HELD_OUT,
    "Grey": HELD_OUT,
    "summer_1am": HELD_OUT,
}

OBJECT_COUNTS, OBJECT_COUNT_ODDS = (1, 2, 3), (0.4, 0.4, 0.2)  # objects per image, and their odds
# The longer side of a stamp, as a share of the image's side: a lone object is larger.
ALONE_SCALE, SHARED_SCALE = (0.45, 0.85), (0.35, 0.65)
CROP_SHARE = (0.35, 1.0)  # the background crop's side, as a share of the photograph's shorter side
MIN_VISIBLE = 0.5  # each object keeps at least this share of its area in view
PLACEMENT_TRIES = 20
STAMP_SIDE = 512  # stamps are kept in memory with their longer side at most this
BACKGROUND_SIDE = 1280  # backgrounds likewise
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # ImageNet's channel statistics, the world's classifiers'
IMAGENET_STD = (0.229, 0.224, 0.225)


def split_part(split: str) -> str:
    """The stamps' and backgrounds' split of a world split: "train" -> TRAIN, else HELD_OUT."""
    return TRAIN if split == "train" else HELD_OUT


def _folder(env: str, package: str, inner: str) -> Path:
    named = os.environ.get(env)
    if named:
        folder = Path(named).expanduser()
        if not folder.is_dir():
            raise DataUnavailable(f"${env} names {folder}, which is not a folder")
        return folder
    return package_folder(package) / inner


def stamps_folder() -> Path:
    """Tux Paint's stamps: ``$PTAME_OBJECTS_STAMPS``, else Debian's tuxpaint-stamps-default (fetched once).

    Raises:
        DataUnavailable: neither can be had.
    """
    return _folder(STAMPS_ENV, STAMPS_PACKAGE, STAMPS_PATH)


def backgrounds_folder() -> Path:
    """The wallpapers: ``$PTAME_OBJECTS_BACKGROUNDS``, else Debian's plasma-workspace-wallpapers (fetched once).

    Raises:
        DataUnavailable: neither can be had.
    """
    return _folder(BACKGROUNDS_ENV, BACKGROUNDS_PACKAGE, BACKGROUNDS_PATH)


def _shrunk(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def _read(path: Path, mode: str, side: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(_shrunk(image.convert(mode), side))
    except FileNotFoundError:
        raise DataUnavailable(f"the objects world's file {path} is missing") from None
    except OSError as error:
        raise DataUnavailable(f"the objects world's file {path} cannot be read ({error})") from None


@functools.lru_cache(maxsize=len(STAMPS))
def stamp(name: str) -> np.ndarray:
    """A stamp of ``STAMPS`` as (h, w, 4) uint8 RGBA, its longer side at most ``STAMP_SIDE``."""
    pixels = _read(stamps_folder() / name, "RGBA", STAMP_SIDE)
    if not (pixels[..., 3] >= 128).any():
        raise DataUnavailable(f"the stamp {name} is fully transparent: not a cut-out")
    return pixels


def _wallpaper_file(folder: Path) -> Path:
    images = [path for path in (folder / "contents" / "images").glob("*") if path.suffix.lower() in {".jpg", ".png"}]
    if not images:
        raise DataUnavailable(f"the wallpaper folder {folder} has no contents/images/*.jpg or *.png")

    def width(path: Path) -> int:
        return int(path.stem.split("x")[0]) if path.stem.split("x")[0].isdigit() else 0

    fitting = [path for path in images if width(path) <= 2 * BACKGROUND_SIDE]
    return max(fitting, key=width) if fitting else min(images, key=width)


@functools.lru_cache(maxsize=len(BACKGROUNDS))
def background(name: str) -> np.ndarray:
    """A photograph of ``BACKGROUNDS`` as (h, w, 3) uint8 RGB, its longer side at most ``BACKGROUND_SIDE``."""
    return _read(_wallpaper_file(backgrounds_folder() / name), "RGB", BACKGROUND_SIDE)


def stamps_of(split: str) -> dict[int, tuple[str, ...]]:
    """ImageNet class index -> the names of its stamps in a world split (sorted), for the classes it has."""
    part = split_part(split)
    classes: dict[int, list[str]] = {}
    for name, (index, stamp_split) in sorted(STAMPS.items()):
        if stamp_split == part:
            classes.setdefault(index, []).append(name)
    return {index: tuple(names) for index, names in sorted(classes.items())}


def backgrounds_of(split: str) -> tuple[str, ...]:
    """The backgrounds of a world split, sorted."""
    part = split_part(split)
    return tuple(sorted(name for name, background_split in BACKGROUNDS.items() if background_split == part))


def _background_crop(rng: np.random.Generator, split: str, size: int) -> np.ndarray:
    names = backgrounds_of(split)
    photo = background(names[rng.integers(len(names))])
    height, width = photo.shape[:2]
    side = max(1, round(min(height, width) * rng.uniform(*CROP_SHARE)))
    top, left = rng.integers(height - side + 1), rng.integers(width - side + 1)
    crop = cv2.resize(photo[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return crop.astype(np.float32) / 255


def _scaled_stamp(rng: np.random.Generator, name: str, longer: int) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, 3) premultiplied colour and (h, w) alpha in [0, 1] of a stamp with its longer side ``longer``."""
    pixels = stamp(name).astype(np.float32) / 255
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    height, width = pixels.shape[:2]
    scale = longer / max(height, width)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    alpha = pixels[..., 3:]
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    premultiplied = cv2.resize(np.ascontiguousarray(pixels[..., :3] * alpha), shape, interpolation=interpolation)
    alpha = cv2.resize(np.ascontiguousarray(alpha[..., 0]), shape, interpolation=interpolation)
    return np.clip(premultiplied, 0, 1), np.clip(alpha, 0, 1)


def _layers(rng: np.random.Generator, stamps: list[str], size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each stamp as a full-size layer: (S, S, 3) premultiplied colour, (S, S) alpha, at a random place."""
    scales = ALONE_SCALE if len(stamps) == 1 else SHARED_SCALE
    layers = []
    for name in stamps:
        colour, alpha = _scaled_stamp(rng, name, max(8, round(size * rng.uniform(*scales))))
        height, width = alpha.shape
        top, left = rng.integers(size - height + 1), rng.integers(size - width + 1)
        full_colour, full_alpha = np.zeros((size, size, 3), np.float32), np.zeros((size, size), np.float32)
        full_colour[top : top + height, left : left + width] = colour
        full_alpha[top : top + height, left : left + width] = alpha
        layers.append((full_colour, full_alpha))
    return layers


def _visible(alphas: list[np.ndarray]) -> list[np.ndarray]:
    """Each layer's alpha less what the layers above it (later in the list) cover."""
    visible, above = [], np.zeros_like(alphas[0])
    for alpha in reversed(alphas):
        visible.append(alpha * (1 - above))
        above = above + alpha * (1 - above)
    return visible[::-1]


def draw_objects(
    rng: np.random.Generator, name: str, size: int, split: str
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, np.ndarray]]]:
    """One composite: a background crop with the labelled class's stamp and 0 to 2 stamps of other classes.

    Args:
        rng: the source of randomness. name: the labelled object's class (a name of ``OBJECTS.classes``).
        size: the side S. split: the world split; its stamps and backgrounds are drawn.

    Returns:
        (image (S, S, 3) float32 in [0, 1], the labelled object's visible coverage (S, S) in [0, 1],
        [(class name, visible coverage (S, S) in [0, 1])] of the other objects).
    """
    stamps = stamps_of(split)
    label = OBJECT_CLASS_INDICES[OBJECT_CLASSES.index(name)]
    others = [index for index in stamps if index != label]
    count = int(rng.choice(OBJECT_COUNTS, p=OBJECT_COUNT_ODDS))
    classes = [
        label,
        *(int(index) for index in rng.choice(others, size=min(count, len(others) + 1) - 1, replace=False)),
    ]
    chosen = [stamps[index][rng.integers(len(stamps[index]))] for index in classes]
    order = rng.permutation(len(chosen))  # drawing order: later ones cover earlier ones
    image = _background_crop(rng, split, size)
    for _ in range(PLACEMENT_TRIES):
        layers = _layers(rng, [chosen[i] for i in order], size)
        coverages = _visible([alpha for _, alpha in layers])
        if all(visible.sum() >= MIN_VISIBLE * alpha.sum() for visible, (_, alpha) in zip(coverages, layers)):
            break
    for colour, alpha in layers:
        image = colour + image * (1 - alpha[..., None])
    by_class = {classes[i]: coverage for i, coverage in zip(order, coverages)}
    other_objects = [(OBJECT_CLASSES[OBJECT_CLASS_INDICES.index(index)], by_class[index]) for index in classes[1:]]
    return image, by_class[label], other_objects


OBJECT_CLASS_INDICES: tuple[int, ...] = tuple(sorted({index for index, _ in STAMPS.values()}))
OBJECT_CLASSES: tuple[str, ...] = tuple(imagenet_class_names()[index] for index in OBJECT_CLASS_INDICES)

OBJECTS = register_world(
    World(
        "objects",
        OBJECT_CLASSES,
        224,
        IMAGENET_MEAN,
        IMAGENET_STD,
        draw_objects,
        None,
        __name__,
        class_indices=OBJECT_CLASS_INDICES,
        split_labels={
            split: tuple(OBJECT_CLASS_INDICES.index(index) for index in stamps_of(split)) for split in SPLIT_SEEDS
        },
        max_objects=max(OBJECT_COUNTS),
    )
)
