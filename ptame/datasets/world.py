"""A generated world as data: one ``World`` record per world, and the sample and Dataset set-up they share.

A world is its classes, its default image size, the channel statistics that normalise its
networks' inputs, a draw function and its networks' recipe (``WorldRecipe``). ``World.sample``
does the rest, the same for every world: it checks the split, index and size, seeds a generator
from (the split's seed, index), picks the label (``index % len(classes)``, so every run of
``len(classes)`` consecutive indices holds one object of each class; of the split's labels where
a world names them), calls the draw function and turns its image and objects' coverage into a
``WorldSample``. ``register_world`` puts a world in
``WORLDS``, the table that ``python -m train world``, ``train images`` and ``train evaluate``
read; ``ptame.datasets.shapes`` and ``ptame.datasets.textures`` each register one (as timm's
variants: a few lines of arguments passed to one shared builder).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch

from ptame.loss import LossWeights
from ptame.training import TrainSettings

# The loss the worlds' explainers are trained with: the default recipe's until issue 26 moved its
# area from 4 to 2 (docs/own-classifier.md). The worlds' classifiers also learnt from masked
# views, and the committed demo (checkpoints/shapes) was trained with these values.
WORLD_EXPLAINER_LOSS = LossWeights(ce=1.0, area=4.0, smooth=0.01)

SPLIT_SEEDS: dict[str, int] = {"train": 0, "validation": 1, "test": 2}
MIN_SIZE = 32

# (generator, class name, side S, split) -> (image (S, S, 3) float32, unclipped; the object's
# coverage (S, S) float32 in [0, 1]), or, for a world of several objects per image, (image, the
# labelled object's coverage, [(class name, coverage)] of the other objects). The generator is
# seeded by (split, index); the image is clipped to [0, 1] afterwards and a mask is where the
# coverage is at least 0.5. The split lets a world draw other files for held-out images.
Draw = Callable[
    [np.random.Generator, str, int, str],
    tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, list[tuple[str, np.ndarray]]],
]


@dataclass(frozen=True)
class WorldSample:
    """One image of a generated world.

    pixels: (3, S, S) float32 in [0, 1]. label: index into the world's classes. mask: (S, S) bool,
    True on the object. objects: every object of the image as (label, mask), the labelled one first.
    """

    pixels: torch.Tensor
    label: int
    mask: torch.Tensor
    objects: tuple[tuple[int, torch.Tensor], ...] = ()

    def picture(self) -> np.ndarray:
        """The image as (S, S, 3) uint8, as its PNG file holds it (``pixels * 255``, rounded)."""
        return (self.pixels.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


@dataclass(frozen=True)
class WorldRecipe:
    """How a world's networks are trained (by ``python -m train world``): architectures and settings.

    classifier, auxiliary: timm architectures, created from random initialisation with
    ``classifier_args`` / ``auxiliary_args``. Each trains on its own, disjoint range of training
    images (the classifier on the first ones, then the auxiliary network, then the explainer);
    every batch is new. ``*_schedule``: (side, steps) phases; images are area-downsampled to the
    phase's side (progressive resizing); the last phase should be at the world's image size.
    explainer_steps: steps of a P-TAME explainer of the classifier on the auxiliary network's
    ``feature_levels`` (0: no explainer), trained with ``explainer`` (the default recipe, with
    ``WORLD_EXPLAINER_LOSS``).

    The classifier (only) is also trained for the images P-TAME's masking shows it: a
    ``masked_share`` of each batch is masked (the object kept, on black or on parts of its
    background); the first ``cutout_share`` of each batch is added again with its object cut out,
    and an all-black image is added too, both trained towards the uniform distribution with weight
    ``blank_weight``. ``workers`` DataLoader processes generate the images while the main process
    trains with ``threads`` CPU threads (1 + 1: two cores); a rerun with the same threads gives the
    same weights. test_images: the first test images that metrics.json is measured on.

    out: the command's default --out (None: runs/NAME). command: the command line that trains it,
    as its model cards say (None: ``python -m train world --world NAME``). roles: each network's
    model-card sentence (formatted with the recipe's fields; None: a generic one).
    """

    classifier: str
    auxiliary: str
    classifier_schedule: tuple[tuple[int, int], ...]
    auxiliary_schedule: tuple[tuple[int, int], ...]
    classifier_args: Mapping[str, object] = field(default_factory=dict)
    auxiliary_args: Mapping[str, object] = field(default_factory=dict)
    explainer_steps: int = 0
    feature_levels: tuple[int, ...] = (1, 2, 3, 4)
    explainer: TrainSettings = TrainSettings(amp=False, loss=WORLD_EXPLAINER_LOSS)
    batch_size: int = 32
    network_lr: float = 3e-3
    network_weight_decay: float = 0.05
    masked_share: float = 0.5
    cutout_share: float = 0.25
    blank_weight: float = 0.5
    test_images: int = 500
    seed: int = 0
    workers: int = 1
    threads: int = 1
    out: str | None = None
    command: str | None = None
    roles: Mapping[str, str] | None = None


@dataclass(frozen=True)
class World:
    """A generated world: what its images are and how its networks are trained.

    name: its key (``--world``, file names). classes: the class names, in label order.
    image_size: the default side S. mean, std: channel statistics of its training images, which
    normalise its networks' inputs. draw: the image of one object (``Draw``). recipe: its
    networks' recipe (None: a world explained through a classifier trained elsewhere, such as an
    ImageNet network). module: where it is defined (the model cards name it).
    class_indices: each class's output index in the world's classifiers (None: its label).
    split_labels: the labels drawn in each split (None: every label in every split), for a world
    whose held-out images hold only some of its classes. max_objects: the most objects an image has.
    """

    name: str
    classes: tuple[str, ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    draw: Draw
    recipe: WorldRecipe | None
    module: str = ""
    min_size: int = MIN_SIZE
    class_indices: tuple[int, ...] | None = None
    split_labels: Mapping[str, tuple[int, ...]] | None = None
    max_objects: int = 1

    def class_index(self, label: int) -> int:
        """The classifier's output index of a label (``class_indices``, else the label itself)."""
        return label if self.class_indices is None else self.class_indices[label]

    def sample(self, index: int, split: str = "test", size: int | None = None) -> WorldSample:
        """The ``index``-th image of a split, generated deterministically.

        Args:
            index: >= 0. split: "train", "validation" or "test" (different seeds, different images).
            size: side S in pixels, >= ``min_size`` (None: the world's ``image_size``).

        Returns:
            The sample: pixels (3, S, S) float32 in [0, 1], label, mask (S, S) bool.
        """
        size = self.side(size)
        check_split(split)
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        rng = np.random.default_rng([SPLIT_SEEDS[split], index])
        labels = range(len(self.classes)) if self.split_labels is None else self.split_labels[split]
        label = labels[index % len(labels)]
        drawn = self.draw(rng, self.classes[label], size, split)
        image, coverage, others = drawn[0], drawn[1], drawn[2] if len(drawn) > 2 else []
        pixels = torch.from_numpy(np.ascontiguousarray(np.clip(image, 0.0, 1.0).transpose(2, 0, 1)))
        mask = torch.from_numpy(coverage >= 0.5)
        objects = [
            (label, mask),
            *((self.classes.index(name), torch.from_numpy(other >= 0.5)) for name, other in others),
        ]
        return WorldSample(pixels=pixels, label=label, mask=mask, objects=tuple(objects))

    def side(self, size: int | None) -> int:
        """The image side S to draw: ``size``, or the world's ``image_size`` for None.

        Raises:
            ValueError: ``size`` below the world's ``min_size``.
        """
        size = self.image_size if size is None else size
        if size < self.min_size:
            raise ValueError(f"size must be >= {self.min_size} pixels, got {size}")
        return size

    def images(self, split: str, length: int, size: int | None = None, start: int = 0) -> "WorldImages":
        """``length`` consecutive images of a split from index ``start``, as a Dataset."""
        return WorldImages(self, split, length, size, start)


def check_split(split: str) -> None:
    """Raise ValueError unless ``split`` is one of ``SPLIT_SEEDS``."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}: expected one of {sorted(SPLIT_SEEDS)}")


class WorldImages(torch.utils.data.Dataset):
    """``length`` consecutive images of a world's split, from index ``start``.

    Args:
        world: the world. split: one of ``SPLIT_SEEDS``. length: >= 1 images.
        size: their side, >= the world's ``min_size`` (None: its ``image_size``). start: >= 0, the first index.

    Items are (pixels (3, S, S) float32 in [0, 1], label, mask (S, S) bool).
    """

    def __init__(self, world: World, split: str, length: int, size: int | None = None, start: int = 0) -> None:
        size = world.side(size)
        check_split(split)
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.world = world
        self.split = split
        self.length = length
        self.size = size
        self.start = start

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        sample = self.world.sample(self.start + index, self.split, self.size)
        return sample.pixels, sample.label, sample.mask


_WORLDS: dict[str, World] = {}
WORLDS: Mapping[str, World] = MappingProxyType(_WORLDS)  # name -> world, in registration order


def register_world(world: World) -> World:
    """Add ``world`` to ``WORLDS`` (replacing a world of the same name); returns it."""
    _WORLDS[world.name] = world
    return world


def unregister_world(name: str) -> None:
    """Remove a registered world (a test's); unknown names are ignored."""
    _WORLDS.pop(name, None)


def get_world(name: str) -> World:
    """The registered world ``name``.

    Raises:
        ValueError: no such world (the message lists the known ones).
    """
    try:
        return _WORLDS[name]
    except KeyError:
        raise ValueError(f"unknown world {name!r}: expected one of {sorted(_WORLDS)}") from None
