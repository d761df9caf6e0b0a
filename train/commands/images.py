"""Write the generated images of a synthetic world (shapes, textures, ...) to a folder of PNG files.

``python -m train images --world textures --split train --count 4000 --start 100000 --out DIR``
writes images ``start`` to ``start + count - 1`` of a split, at the world's default size, as
``DIR/{world}-{split}-{index:06d}.png`` (RGB, ``pixels * 255`` rounded, as ``picture()`` gives
them). Labels and masks are not written: the folder is for training and testing without labels.
The images are written to a temporary folder next to DIR and renamed into place at the end; an
existing DIR that is not empty is refused.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from ptame.datasets import WORLDS, get_world
from ptame.datasets.world import SPLIT_SEEDS
from ptame.loading.files import replace_folder


def image_name(world: str, split: str, index: int) -> str:
    """The file name of an image: ``{world}-{split}-{index:06d}.png``."""
    return f"{world}-{split}-{index:06d}.png"


def write_images(out: Path, world: str, split: str, count: int, start: int = 0, progress: bool = True) -> list[Path]:
    """Write images ``start`` .. ``start + count - 1`` of a world's split as PNG files into ``out``.

    Args:
        out: the folder to create; it may exist only if empty. Its parents are created.
        world: a world of ``ptame.datasets.WORLDS`` ("shapes", "textures").
        split: "train", "validation" or "test".
        count: >= 1 images.
        start: >= 0, the first index.
        progress: show a progress bar.

    Returns:
        The paths of the written files, in index order.

    Raises:
        FileExistsError: ``out`` exists and is not an empty folder.
        ValueError: an unknown world or split, count < 1 or start < 0.
    """
    out = Path(out)
    chosen = get_world(world)
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}: expected one of {sorted(SPLIT_SEEDS)}")
    if count < 1 or start < 0:
        raise ValueError(f"count must be >= 1 and start >= 0, got count {count}, start {start}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder: choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)
    names = []
    try:
        for index in tqdm(
            range(start, start + count), desc=f"writing {world} {split}", unit="image", disable=not progress
        ):
            names.append(image_name(world, split, index))
            Image.fromarray(chosen.sample(index, split).picture()).save(staging / names[-1])
        if out.exists():
            out.rmdir()  # empty, as checked; fails rather than replace files written there since
        replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in names]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m train images``."""
    parser.add_argument("--world", choices=tuple(WORLDS), required=True, help="the synthetic world")
    parser.add_argument("--split", choices=sorted(SPLIT_SEEDS), required=True, help="the split to draw from")
    parser.add_argument("--count", type=int, required=True, help="number of images (>= 1)")
    parser.add_argument("--start", type=int, default=0, help="index of the first image (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="folder to create (new, or empty)")


def run(args: argparse.Namespace) -> None:
    """Write the images and print where they went."""
    try:
        paths = write_images(args.out, args.world, args.split, args.count, args.start)
    except (FileExistsError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {len(paths)} images to {args.out} ({paths[0].name} .. {paths[-1].name})")
