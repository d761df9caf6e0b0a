"""Training images streamed from webdataset shards (tar files, local or remote), in a deterministic order.

``--data`` of ``python -m train explainer`` and ``train imagenet`` takes, besides a folder, shards as
webdataset names them: a tar file, a brace pattern (``DIR/train-{0000..0127}.tar``), several joined
by ``::``, URLs (``https://...``, ``hf://datasets/ORG/NAME/train-{0000..0127}.tar``, ``pipe:CMD``),
opened with webdataset's ``gopen``; or a wids shard index (a ``.json`` file:
``{"shardlist": [{"url": ..., "nsamples": ...}, ...]}``, relative URLs from the index's place). Every
image file in a shard (by its suffix, as a folder's: .jpg, .png, ...) is one training image; other
members (labels, metadata) are skipped; labels are never read.

Image counts: local shards are counted from their tar headers; remote ones need an index, which
``python -m train.shards index SPEC --out index.json`` writes (reading every shard once).
``python -m train.shards pack FOLDER --out DIR`` writes a folder's images into shards.

The order (``ShardPlan``), deterministic from the shards, the seed and the layout of the readers:

- images are numbered in the order of the shards as listed and of the files in each; the held-out
  images are chosen as a folder's (the first of a seeded permutation of those numbers), and the
  training images keep their order (training index t = 0, 1, ...);
- the readers are the processes times the DataLoader workers of each (one when --workers 0). Shard
  i goes to process i mod P and, among that process's shards, to reader (i div P) mod W: webdataset's
  split_by_node then split_by_worker. Every shard is read by one reader, every image trained on by
  one process;
- each reader cuts its stream of images into windows of ``--shuffle-window`` images and permutes
  each window (a generator seeded by seed + epoch + reader x 2^32, one permutation per window in
  turn); its batches are consecutive runs of the result. Every reader gives q batches per epoch, q
  the smallest reader's whole batches (the rest of an epoch's images are left out, as a folder's
  incomplete last batch), so an epoch is q x W steps on every process;
- step s of an epoch comes, in each process, from reader s mod W, its batch s div W; image t's
  augmentation is seeded as in a folder (``augmentation_seed(seed, epoch, t)``).

So one reader (one process, --workers 0 or 1) whose window holds all the images reads exactly the
global batches of a folder of the same images in the same order (``TrainingOrder``), with the same
augmentation, and trains the same weights. A resumed run skips the shards before its step unopened
and is the uninterrupted run, for the same processes and workers.
"""

import argparse
import bisect
import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info

from ptame.loading.files import atomic_write_text
from train.data import IMAGE_EXTENSIONS, TrainTransform, augmentation_seed, image_files

DEFAULT_SHUFFLE_WINDOW = 4096  # images a reader holds (encoded) to shuffle; ~0.45 GB of ImageNet JPEGs
INDEX_KIND = "wids-shard-index-v1"  # webdataset's wids shard index format


@dataclass(frozen=True)
class Shards:
    """Webdataset shards and how many images each holds.

    urls: the shards, in order (local paths or URLs). counts: images per shard.
    """

    urls: tuple[str, ...]
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        """Images in all the shards."""
        return sum(self.counts)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """The number of each shard's first image (images numbered across the shards in order)."""
        offsets, total = [], 0
        for count in self.counts:
            offsets.append(total)
            total += count
        return tuple(offsets)


def is_remote(url: str) -> bool:
    """Whether a shard is read through a URL scheme (https://, hf://, pipe:...) rather than a local path."""
    scheme = urlparse(url).scheme
    return len(scheme) > 1 and scheme != "file"


def local_path(url: str) -> Path:
    """The local file of a path or file:// URL."""
    return Path(urlparse(url).path if url.startswith("file:") else url).expanduser()


def is_image(name: str) -> bool:
    """Whether a tar member is a training image: an image suffix, not webdataset metadata (__*__)."""
    base = name.rsplit("/", 1)[-1]
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS and not base.startswith("__")


def expand(spec: str) -> list[str]:
    """The shard URLs of a webdataset spec: "::"-joined parts, each brace-expanded (webdataset's rules)."""
    from webdataset.shardlists import expand_urls

    return list(expand_urls(spec))


def count_images(url: str) -> int:
    """The images of a local shard, from its tar headers (file contents are skipped, not read).

    Raises:
        FileNotFoundError: no such file. ValueError: not a readable tar file.
    """
    path = local_path(url)
    if not path.is_file():
        raise FileNotFoundError(f"shard {url} does not exist")
    try:
        with tarfile.open(path) as archive:
            return sum(1 for member in archive if member.isreg() and is_image(member.name))
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ValueError(f"shard {url} is not a readable tar file: {error}") from error


def beside(location: str, url: str) -> str:
    """A shard's URL as an index at ``location`` names it: absolute as it is, relative from the index's folder."""
    if is_remote(url) or local_path(url).is_absolute():
        return url
    if is_remote(location):
        return location.rsplit("/", 1)[0] + "/" + url
    return str(local_path(location).resolve().parent / url)


def read_index(location: str) -> Shards:
    """The shards and counts of a wids shard index (.json, local or a URL).

    Raises:
        ValueError: not an index of shards with their counts.
    """
    from webdataset import gopen

    try:
        with gopen(location) as stream:
            index = json.load(stream)
        entries = index["shardlist"]
        urls = tuple(beside(location, entry["url"]) for entry in entries)
        counts = tuple(int(entry["nsamples"]) for entry in entries)
    except (OSError, ValueError, KeyError, TypeError) as error:
        shape = "{'shardlist': [{'url': ..., 'nsamples': ...}, ...]}"
        raise ValueError(f"{location} is not a shard index {shape}: {error}") from error
    if not urls or any(count < 0 for count in counts):
        raise ValueError(f"{location} lists no shards, or a negative count")
    return Shards(urls, counts)


def read_shards(spec: str) -> Shards:
    """The shards a ``--data`` spec names, with their image counts (see the module docstring).

    Raises:
        FileNotFoundError: a local shard is missing, or the shards hold no image.
        ValueError: a remote shard without an index, or an unreadable shard or index.
    """
    if spec.endswith(".json"):
        shards = read_index(spec)
    else:
        urls = expand(spec)
        remote = [url for url in urls if is_remote(url)]
        if remote:
            raise ValueError(
                f"remote shards ({remote[0]}, ...) need their image counts: write an index once with "
                f"`python -m train.shards index '{spec}' --out index.json` and pass --data index.json"
            )
        shards = Shards(tuple(urls), tuple(count_images(url) for url in urls))
    if shards.total == 0:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the shards of {spec}")
    return shards


def is_shard_spec(data: str) -> bool:
    """Whether ``--data`` names shards (a .tar, a .json index, a pattern, URLs) rather than a folder."""
    if Path(data).expanduser().is_dir():
        return False
    return ".tar" in data or data.endswith(".json") or "::" in data or "{" in data or is_remote(data)


def shard_images(url: str, expected: int) -> Iterator[tuple[str, bytes]]:
    """A shard's images in order, streamed (webdataset's ``gopen``): (``url:member``, file bytes).

    Raises:
        ValueError: the shard cannot be read, or holds another number of images than ``expected``
            (raised once it is read to its end).
    """
    from webdataset import gopen

    found = 0
    try:
        with gopen(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                if member.isreg() and is_image(member.name):
                    found += 1
                    if found > expected:
                        break
                    file = archive.extractfile(member)
                    yield f"{url}:{member.name}", file.read() if file is not None else b""
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ValueError(f"shard {url} cannot be read: {error}") from error
    if found != expected:
        raise ValueError(f"shard {url} holds {'more' if found > expected else found} images; its count is {expected}")


def decode(data: bytes, name: str) -> Image.Image:
    """An image file's bytes as an RGB image (as ``train.data.load_rgb`` reads a file).

    Raises:
        ValueError: not an image (names it).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {name}: {error}") from error


def held_out_numbers(total: int, held_out: int, seed: int) -> list[int]:
    """The numbers of the held-out images: the first ``held_out`` of a permutation of 0..total-1
    seeded by ``seed`` (a folder's rule, ``train.commands.explainer.split_files``), in increasing order."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:held_out])


@dataclass(frozen=True)
class ReaderShard:
    """One shard of a reader's stream, held in a few numbers whatever its size.

    shard: its place in ``Shards``. count: its images. held_out: the in-shard numbers of its
    held-out images, increasing. first_index: the training index of its first training image.
    """

    shard: int
    count: int
    held_out: tuple[int, ...]
    first_index: int

    @property
    def length(self) -> int:
        """Its training images."""
        return self.count - len(self.held_out)

    def training_index(self, number: int) -> int | None:
        """The training index of its image ``number``, or None for a held-out image."""
        before = bisect.bisect_left(self.held_out, number)
        if before < len(self.held_out) and self.held_out[before] == number:
            return None
        return self.first_index + number - before


class ShardPlan:
    """Which images each reader streams, and the epoch's batches (the module docstring's order).

    Args:
        shards: the shards and their counts.
        held_out: image numbers (across the shards) kept out of training.
        batch_size: images per batch of one process (the global batch over the processes).
        processes: training processes.
        workers: readers per process (DataLoader workers; 1 for none).
        window: images per shuffle window.

    Raises:
        ValueError: a reader gets fewer images than one batch.
    """

    def __init__(
        self, shards: Shards, held_out: Sequence[int], batch_size: int, processes: int, workers: int, window: int
    ) -> None:
        if window < 1 or workers < 1 or processes < 1 or batch_size < 1:
            raise ValueError("window, workers, processes and batch size must be >= 1")
        self.shards, self.batch_size, self.processes, self.workers, self.window = (
            shards, batch_size, processes, workers, window,
        )  # fmt: skip
        held = sorted(set(held_out))
        self.training_images = shards.total - len(held)
        self.streams: list[list[ReaderShard]] = [[] for _ in range(processes * workers)]
        first_index = 0
        for shard, (offset, count) in enumerate(zip(shards.offsets, shards.counts)):
            inside = held[bisect.bisect_left(held, offset) : bisect.bisect_left(held, offset + count)]
            part = ReaderShard(shard, count, tuple(number - offset for number in inside), first_index)
            self.streams[self.reader_of(shard)].append(part)
            first_index += part.length
        self.lengths = [sum(part.length for part in stream) for stream in self.streams]
        self.batches_per_epoch = min(self.lengths) // batch_size
        if self.batches_per_epoch == 0:
            reader = self.lengths.index(min(self.lengths))
            raise ValueError(
                f"{shards.total} images in {len(shards.urls)} shards cannot feed {processes} process(es) x {workers} "
                f"reader(s) with batches of {batch_size}: reader {reader} gets {self.lengths[reader]} training images; "
                "use fewer --workers or processes, more shards, or a smaller batch"
            )

    def reader_of(self, shard: int) -> int:
        """The reader of a shard: process shard mod P, then reader (shard div P) mod W of that process."""
        process, turn = shard % self.processes, shard // self.processes
        return process * self.workers + turn % self.workers

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch: every reader's batches, on every process."""
        return self.batches_per_epoch * self.workers

    def images_left_out(self) -> int:
        """Training images left out of each epoch (readers' images beyond their whole batches)."""
        return self.training_images - self.steps_per_epoch * self.batch_size * self.processes

    def shuffled(self, reader: int, epoch: int, seed: int, start: int) -> Iterator[tuple[int, str, bytes]]:
        """A reader's epoch after the window shuffle, from position ``start`` on: (training index, name, bytes).

        Windows before the one holding ``start`` are not read (their permutations are still drawn,
        to keep the generator's sequence), nor are the shards before it opened.
        """
        generator = torch.Generator().manual_seed(seed + epoch + (reader << 32))
        length = self.lengths[reader]
        first_window = start // self.window * self.window
        for window_start in range(0, first_window, self.window):
            torch.randperm(min(self.window, length - window_start), generator=generator)
        images = self._read(reader, first_window)
        try:
            for window_start in range(first_window, length, self.window):
                window = [next(images) for _ in range(min(self.window, length - window_start))]
                order = torch.randperm(len(window), generator=generator).tolist()
                for position, chosen in enumerate(order, start=window_start):
                    if position >= start:
                        yield window[chosen]
        finally:
            images.close()

    def _read(self, reader: int, start: int) -> Iterator[tuple[int, str, bytes]]:
        """A reader's training images in stream order from position ``start``: (training index, name, bytes)."""
        position = 0
        for part in self.streams[reader]:
            if position + part.length <= start:
                position += part.length
                continue
            for number, (name, data) in enumerate(shard_images(self.shards.urls[part.shard], part.count)):
                index = part.training_index(number)
                if index is not None:
                    if position >= start:
                        yield index, name, data
                    position += 1

    def step_source(self, step: int) -> tuple[int, int, int]:
        """(epoch, reader within the process, batch of that reader) of a step counted from 0."""
        epoch, place = divmod(step, self.steps_per_epoch)
        return epoch, place % self.workers, place // self.workers


class ShardBatches(IterableDataset):
    """One process's batches of augmented images from shards, steps ``start_step`` to ``stop_step``.

    Use with ``DataLoader(..., batch_size=None, num_workers=plan.workers or 0)``: worker w serves
    steps start_step + w, + W, ... (as the DataLoader takes them in turn), so the batches arrive in
    step order. Items: (batch_size, 3, crop, crop) float32 in [0, 1].
    """

    def __init__(
        self,
        plan: ShardPlan,
        transform: TrainTransform,
        seed: int,
        rank: int = 0,
        start_step: int = 0,
        stop_step: int = 0,
    ) -> None:
        self.plan, self.transform, self.seed, self.rank = plan, transform, seed, rank
        self.start_step, self.stop_step = start_step, stop_step

    def __len__(self) -> int:
        return self.stop_step - self.start_step

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.plan.workers:
            raise ValueError(f"the plan has {self.plan.workers} reader(s) per process, the DataLoader {workers}")
        steps = range(self.start_step + worker, self.stop_step, workers)
        if not steps:
            return
        epoch, reader, batch = self.plan.step_source(steps[0])
        while True:
            yield from self._epoch(epoch, reader, batch, steps)
            epoch, batch = epoch + 1, 0
            if epoch * self.plan.steps_per_epoch >= steps.stop:
                return

    def _epoch(self, epoch: int, reader: int, first: int, steps: range) -> Iterator[torch.Tensor]:
        """This reader's batches of one epoch from batch ``first``, while their steps are in ``steps``."""
        size = self.plan.batch_size
        images = self.plan.shuffled(self.rank * self.plan.workers + reader, epoch, self.seed, first * size)
        try:
            for batch in range(first, self.plan.batches_per_epoch):
                step = epoch * self.plan.steps_per_epoch + batch * self.plan.workers + reader
                if step >= steps.stop:
                    return
                chosen = [next(images) for _ in range(size)]
                yield torch.stack([self._augmented(index, name, data, epoch) for index, name, data in chosen])
        finally:
            images.close()

    def _augmented(self, index: int, name: str, data: bytes, epoch: int) -> torch.Tensor:
        """Training image ``index`` (file ``name``) decoded and augmented as a folder's is in ``epoch``."""
        generator = torch.Generator().manual_seed(augmentation_seed(self.seed, epoch, index))
        return self.transform(decode(data, name), generator)


def extract_images(shards: Shards, numbers: Sequence[int], folder: Path) -> list[Path]:
    """Write the images ``numbers`` (across the shards) to ``folder`` as files, in increasing order
    of number; only the shards holding them are read. Returns their paths in that order."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = sorted(set(numbers))
    paths = []
    for shard, (offset, count) in enumerate(zip(shards.offsets, shards.counts)):
        inside = [number - offset for number in wanted if offset <= number < offset + count]
        if not inside:
            continue
        for k, (name, data) in enumerate(shard_images(shards.urls[shard], count)):
            if k in inside:
                path = folder / f"{offset + k:09d}{Path(name).suffix.lower()}"
                path.write_bytes(data)
                paths.append(path)
    return paths


def write_index(spec: str, out: Path) -> Shards:
    """Count the images of every shard of ``spec`` (local ones from their headers, remote ones
    streamed once) and write a wids shard index to ``out``.

    Raises:
        FileNotFoundError, ValueError: as ``count_images`` and ``stream_count``.
    """
    urls = expand(spec)
    shards = Shards(tuple(urls), tuple(stream_count(url) if is_remote(url) else count_images(url) for url in urls))
    entries = [{"url": url, "nsamples": count} for url, count in zip(shards.urls, shards.counts)]
    atomic_write_text(out, json.dumps({"__kind__": INDEX_KIND, "wids_version": 1, "shardlist": entries}, indent=1))
    return shards


def stream_count(url: str) -> int:
    """The images of a shard, read through its URL once (webdataset's ``gopen``).

    Raises:
        ValueError: the shard cannot be read.
    """
    from webdataset import gopen

    try:
        with gopen(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
            return sum(1 for member in archive if member.isreg() and is_image(member.name))
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ValueError(f"shard {url} cannot be read: {error}") from error


def pack_folder(files: Sequence[Path], root: Path, out: Path, per_shard: int) -> list[Path]:
    """Write image files into webdataset shards ``out/train-0000.tar``, ... of ``per_shard`` images each,
    in the order given, each named by its path under ``root``; returns the shards' paths.

    Raises:
        ValueError: ``per_shard`` < 1, or more than 10,000 shards.
    """
    if per_shard < 1 or len(files) > 10_000 * per_shard:
        raise ValueError(f"cannot pack {len(files)} images in shards of {per_shard} (at most 10,000 shards)")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, start in enumerate(range(0, len(files), per_shard)):
        path = out / f"train-{number:04d}.tar"
        with tarfile.open(path, "w") as archive:
            for file in files[start : start + per_shard]:
                archive.add(file, arcname=Path(file).relative_to(root).as_posix())
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """python -m train.shards index SPEC --out index.json | pack FOLDER --out DIR [--per-shard N]

    index: write a wids shard index with every shard's image count (needed for remote shards).
    pack: write a folder's images (sorted, any depth) into shards DIR/train-0000.tar, ...
    """
    parser = argparse.ArgumentParser(prog="python -m train.shards", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="write a shard index (.json) with each shard's image count")
    index.add_argument("spec", help="shards: a .tar, a pattern such as DIR/train-{0000..0127}.tar, URLs")
    index.add_argument("--out", type=Path, required=True, help="the index to write (.json)")
    pack = commands.add_parser("pack", help="write a folder's images into shards")
    pack.add_argument("folder", type=Path, help="a folder of images (any depth)")
    pack.add_argument("--out", type=Path, required=True, help="the folder of the shards")
    pack.add_argument("--per-shard", type=int, default=1000, help="images per shard")
    args = parser.parse_args(argv)
    try:
        if args.command == "index":
            shards = write_index(args.spec, args.out)
            print(f"{args.out}: {len(shards.urls)} shards, {shards.total} images")
        else:
            paths = pack_folder(image_files(args.folder), args.folder, args.out, args.per_shard)
            print(f"{len(paths)} shards in {args.out}: --data '{args.out}/train-{{0000..{len(paths) - 1:04d}}}.tar'")
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"python -m train.shards: {error}") from error


if __name__ == "__main__":
    main()
