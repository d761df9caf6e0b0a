"""Image folders: file lists, training order and augmentation.

The fixed ImageNet val subsets of the evaluation are in train/imagenet_val.py.

Labels are never read: any folder of images works (ImageNet's class-folder layout included).
"""

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torchvision.transforms.v2 import functional as F

from ptame.loading.backbones import INTERPOLATIONS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def image_files(root: Path) -> list[Path]:
    """Every image file under ``root`` (any depth), sorted by path relative to ``root``.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or holds no image file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    files = sorted(
        (path for path in root.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()),
        key=lambda path: path.relative_to(root).as_posix(),
    )
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return files


def load_rgb(path: Path) -> Image.Image:
    """Read an image file as RGB.

    Raises:
        ValueError: the file cannot be read as an image (names it).
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


class ImageFiles(Dataset):
    """Images from a list of files, through a transform.

    Args:
        paths: image files.
        transform: PIL RGB image -> (3, H, W) tensor in [0, 1] (e.g.
            ``backbone.preprocessing.transform()``).

    Items: pixels (3, H, W) in [0, 1].
    """

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_rgb(self.paths[index])).as_subclass(torch.Tensor)


@dataclass(frozen=True)
class TrainTransform:
    """Training augmentation: resize the shorter side, random square crop, random horizontal flip.

    Randomness comes only from the generator passed in, so an image's augmentation depends on
    its seed alone (not on workers, processes or where a run was resumed).
    """

    resize: int
    crop: int
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, not {self.interpolation!r}")

    def __call__(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        """PIL RGB image -> (3, crop, crop) float in [0, 1]."""
        pixels = F.resize(
            F.to_image(image), [self.resize], interpolation=INTERPOLATIONS[self.interpolation], antialias=True
        )
        height, width = pixels.shape[-2:]
        top = int(torch.randint(0, height - self.crop + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - self.crop + 1, (1,), generator=generator))
        pixels = F.crop(pixels, top, left, self.crop, self.crop)
        if torch.rand((), generator=generator) < 0.5:
            pixels = F.horizontal_flip(pixels)
        return F.to_dtype(pixels, torch.float32, scale=True).as_subclass(torch.Tensor)


class TrainImages(Dataset):
    """Augmented training images, addressed by (index, augmentation seed) pairs from ``TrainingOrder``.

    Items: pixels (3, crop, crop) in [0, 1].
    """

    def __init__(self, paths: Sequence[Path], transform: TrainTransform) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, seed = item
        return self.transform(load_rgb(self.paths[index]), torch.Generator().manual_seed(seed))


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch (64 bits of SHA-256)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}/{index}".encode()).digest()[:8], "little")


class TrainingOrder(Sampler[tuple[int, int]]):
    """Which images this process reads, step by step, from ``start_step`` to ``total_steps``.

    Each epoch is a permutation of the images seeded by ``seed + epoch``; step s of an epoch is
    the global batch at positions [s * batch_size, (s + 1) * batch_size) of it (an incomplete
    last batch is dropped), and process ``rank`` reads the ``rank``-th of ``world_size`` equal
    contiguous parts of it. So the global batches are the same for any number of processes, and
    a run resumed at step k reads exactly what an uninterrupted run reads from step k on.

    Yields (image index, augmentation seed) pairs for ``TrainImages``; use with a DataLoader
    whose batch size is ``local_batch_size``.
    """

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        total_steps: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> None:
        if batch_size % world_size != 0:
            raise ValueError(f"the global batch {batch_size} does not split evenly across {world_size} processes")
        if num_images < batch_size:
            raise ValueError(f"{num_images} images are fewer than one batch of {batch_size}")
        if not 0 <= start_step <= total_steps:
            raise ValueError(f"start step {start_step} is outside 0..{total_steps}")
        self.num_images = num_images
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.seed = seed
        self.rank = rank
        self.local_batch_size = batch_size // world_size
        self.start_step = start_step
        self.steps_per_epoch = num_images // batch_size

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.local_batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, permutation = -1, []
        for step in range(self.start_step, self.total_steps):
            step_epoch, position = divmod(step, self.steps_per_epoch)
            if step_epoch != epoch:
                epoch = step_epoch
                generator = torch.Generator().manual_seed(self.seed + epoch)
                permutation = torch.randperm(self.num_images, generator=generator).tolist()
            first = position * self.batch_size + self.rank * self.local_batch_size
            for index in permutation[first : first + self.local_batch_size]:
                yield index, augmentation_seed(self.seed, epoch, index)
