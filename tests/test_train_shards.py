"""Training images from webdataset shards: counts, indexes, the readers' split, the order, resumption."""

import argparse
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tests.conftest import make_image_tree
from train import shards
from train.commands import explainer
from train.data import TrainImages, TrainingOrder, TrainTransform, image_files
from train.distributed import Processes
from train.recipes import Recipe

TRANSFORM = TrainTransform(resize=40, crop=32)


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_shards(files: list[Path], root: Path, out: Path, per_shard: int) -> list[Path]:
    """Tar files of ``per_shard`` images each, in the order of ``files`` (named by their path under ``root``),
    each image with a label file beside it as webdataset datasets have (``.cls``, skipped by the reader)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, start in enumerate(range(0, len(files), per_shard)):
        path = out / f"train-{number:04d}.tar"
        with tarfile.open(path, "w") as archive:
            for file in files[start : start + per_shard]:
                name = file.relative_to(root).as_posix()
                add_member(archive, name, file.read_bytes())
                add_member(archive, name.rsplit(".", 1)[0] + ".cls", b"3")
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """18 noise images (ImageNet's layout in miniature), in the folder's order."""
    return image_files(make_image_tree(tmp_path_factory.mktemp("images")) / "train")


@pytest.fixture(scope="module")
def spec(images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The 18 images in shards of 4 (the last holds 2), as a brace pattern."""
    folder = tmp_path_factory.mktemp("shards")
    write_shards(images, images[0].parents[1], folder, per_shard=4)
    return f"{folder}/train-{{0000..0004}}.tar"


def test_local_shards_are_counted_from_their_headers_and_indexed(spec: str, tmp_path: Path) -> None:
    found = shards.read_shards(spec)
    assert [Path(url).name for url in found.urls] == [f"train-000{n}.tar" for n in range(5)]
    assert found.counts == (4, 4, 4, 4, 2) and found.total == 18 and found.offsets == (0, 4, 8, 12, 16)
    assert shards.is_shard_spec(spec) and not shards.is_shard_spec(str(tmp_path))
    assert not shards.is_shard_spec(str(tmp_path / "no-such-folder"))  # a folder's typo stays a folder's error

    index = tmp_path / "index" / "train.json"
    index.parent.mkdir()
    assert shards.write_index(spec, index) == found
    written = json.loads(index.read_text())
    assert written["__kind__"] == "wids-shard-index-v1" and written["shardlist"][4]["nsamples"] == 2
    assert shards.read_index(str(index)) == found
    relative = {"shardlist": [{"url": Path(url).name, "nsamples": 4} for url in found.urls[:2]]}
    (Path(found.urls[0]).parent / "relative.json").write_text(json.dumps(relative))
    assert shards.read_shards(str(Path(found.urls[0]).parent / "relative.json")).urls == found.urls[:2]
    assert shards.beside("https://host/data/index.json", "train-0.tar") == "https://host/data/train-0.tar"
    assert shards.beside("hf://datasets/org/name/index.json", "/abs/x.tar") == "/abs/x.tar"


def test_shard_problems_are_clear_errors(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"remote shards \(https://host/train-0.tar, \.\.\.\) need their image counts"):
        shards.read_shards("https://host/train-{0..3}.tar")
    with pytest.raises(FileNotFoundError, match="shard .*train-0005.tar does not exist"):
        shards.read_shards(spec.replace("0004", "0009"))
    (tmp_path / "broken.tar").write_bytes(b"not a tar file")
    with pytest.raises(ValueError, match="broken.tar is not a readable tar file"):
        shards.read_shards(str(tmp_path / "broken.tar"))
    with tarfile.open(tmp_path / "labels.tar", "w") as archive:
        add_member(archive, "a.cls", b"1")
    with pytest.raises(FileNotFoundError, match="no image files"):
        shards.read_shards(str(tmp_path / "labels.tar"))
    (tmp_path / "index.json").write_text('{"shards": []}')
    with pytest.raises(ValueError, match="is not a shard index"):
        shards.read_shards(str(tmp_path / "index.json"))
    found = shards.read_shards(spec)
    wrong = shards.Shards(found.urls[:1], (5,))  # an index that says 5 for a shard of 4
    with pytest.raises(ValueError, match="holds 4 images; its count is 5"):
        list(shards.shard_images(wrong.urls[0], 5))


def test_the_readers_split_the_shards_as_webdataset_and_read_each_image_once(spec: str) -> None:
    """2 processes x 2 workers: shard i to process i mod 2, then to its worker (i div 2) mod 2. In an epoch every
    training image is read by one reader at most; each reader gives the smallest reader's whole batches."""
    found = shards.read_shards(spec)
    plan = shards.ShardPlan(found, held_out=[3], batch_size=2, processes=2, workers=2, window=3)
    assert [plan.reader_of(shard) for shard in range(5)] == [0, 2, 1, 3, 0]
    assert plan.lengths == [5, 4, 4, 4]  # reader 0: shard 0 without image 3, and shard 4
    assert plan.batches_per_epoch == 2 and plan.steps_per_epoch == 4 and plan.images_left_out() == 1
    seen = []
    for reader in range(4):
        epoch = list(plan.shuffled(reader, 0, seed=7, start=0))
        assert len(epoch) == plan.lengths[reader]
        seen += [index for index, _, _ in epoch]
    assert sorted(seen) == list(range(17))  # training indices: 18 images less the held-out one, each once
    with pytest.raises(ValueError, match="reader 1 gets 4 training images; use fewer --workers"):
        shards.ShardPlan(found, held_out=[], batch_size=5, processes=2, workers=2, window=3)


def test_windows_are_shuffled_within_themselves_and_differ_by_epoch(spec: str) -> None:
    plan = shards.ShardPlan(shards.read_shards(spec), held_out=[], batch_size=2, processes=1, workers=1, window=5)
    epoch0 = [index for index, _, _ in plan.shuffled(0, 0, seed=1, start=0)]
    epoch1 = [index for index, _, _ in plan.shuffled(0, 1, seed=1, start=0)]
    for start in range(0, 18, 5):
        assert sorted(epoch0[start : start + 5]) == list(range(start, min(start + 5, 18)))
    assert epoch0 != epoch1 and epoch0 != list(range(18))
    assert [index for index, _, _ in plan.shuffled(0, 0, seed=1, start=7)] == epoch0[7:]


def test_one_reader_with_the_whole_window_reads_a_folders_batches(images: list[Path], spec: str) -> None:
    """The same images, augmentations and global batches as TrainingOrder over the folder, two epochs long."""
    plan = shards.ShardPlan(shards.read_shards(spec), held_out=[], batch_size=4, processes=1, workers=1, window=64)
    assert plan.steps_per_epoch == 4
    streamed = list(shards.ShardBatches(plan, TRANSFORM, seed=5, start_step=0, stop_step=9))
    order = TrainingOrder(len(images), 4, total_steps=9, seed=5)
    folder = list(DataLoader(TrainImages(images, TRANSFORM), batch_size=4, sampler=order))
    assert len(streamed) == len(folder) == 9
    for got, want in zip(streamed, folder, strict=True):
        assert torch.equal(got, want)


def test_workers_take_steps_in_turn_and_a_resumed_stream_is_the_rest(spec: str) -> None:
    """2 DataLoader workers: steps alternate between them; from step 3 the loader gives steps 3.. of the whole
    run (worker 0 then serves the second reader). Batches differ from step to step."""
    plan = shards.ShardPlan(shards.read_shards(spec), held_out=[2, 9], batch_size=2, processes=1, workers=2, window=3)
    assert plan.lengths == [8, 8] and plan.steps_per_epoch == 8  # shards 0, 2, 4 less images 2 and 9; 1, 3

    def stream(start: int) -> list[torch.Tensor]:
        batches = shards.ShardBatches(plan, TRANSFORM, seed=3, start_step=start, stop_step=14)
        return list(DataLoader(batches, batch_size=None, num_workers=2))

    whole = stream(0)
    assert len(whole) == 14 and all(batch.shape == (2, 3, 32, 32) for batch in whole)
    assert not any(torch.equal(whole[i], whole[i + 1]) for i in range(13))
    resumed = stream(3)
    assert len(resumed) == 11
    for got, want in zip(resumed, whole[3:], strict=True):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="the plan has 2 reader"):
        next(iter(shards.ShardBatches(plan, TRANSFORM, seed=3, start_step=0, stop_step=2)))


def test_held_out_images_are_written_out_as_files(images: list[Path], spec: str, tmp_path: Path) -> None:
    found = shards.read_shards(spec)
    written = shards.extract_images(found, [17, 0, 5], tmp_path)
    assert [path.name for path in written] == ["000000000.jpg", "000000005.png", "000000017.png"]
    for path, number in zip(written, (0, 5, 17)):
        assert path.read_bytes() == images[number].read_bytes()
    assert shards.held_out_numbers(18, 3, seed=4) == sorted(
        torch.randperm(18, generator=torch.Generator().manual_seed(4))[:3].tolist()
    )


def test_a_plan_holds_a_few_numbers_per_shard_and_numbers_training_images_around_held_out_ones() -> None:
    """ImageNet's size (1,281,167 images in 1024 shards) for 8 processes x 8 workers: built without reading any
    shard, each shard a few numbers; training indices skip the held-out images."""
    counts = (1251,) * 1023 + (1_281_167 - 1251 * 1023,)
    found = shards.Shards(tuple(f"https://host/train-{n:04d}.tar" for n in range(1024)), counts)
    held = shards.held_out_numbers(found.total, 500, seed=12345)
    plan = shards.ShardPlan(found, held, batch_size=4, processes=8, workers=8, window=4096)
    assert plan.training_images == 1_280_667 and sum(plan.lengths) == 1_280_667
    assert all(len(stream) == 16 for stream in plan.streams)
    assert plan.steps_per_epoch == 8 * (min(plan.lengths) // 4)
    assert plan.images_left_out() == 1_280_667 - plan.steps_per_epoch * 4 * 8
    part = shards.ReaderShard(shard=3, count=6, held_out=(1, 4), first_index=100)
    assert [part.training_index(number) for number in range(6)] == [100, None, 101, 102, None, 103]
    assert part.length == 4


class FirstPixel:
    """A transform that keeps an image's identity and nothing else: its first pixel (3,) as float32
    (the images of ``numbered_images`` are drawn in the colour (number, 0, 0))."""

    def __call__(self, image: object, generator: torch.Generator) -> torch.Tensor:
        return torch.tensor(image.getpixel((0, 0)), dtype=torch.float32)


def numbered_images(folder: Path, count: int) -> list[Path]:
    """``count`` solid 8x8 PNG images, image n of colour (n, 0, 0), in the folder's order."""
    folder.mkdir(parents=True)
    paths = [folder / f"{number:03d}.png" for number in range(count)]
    for number, path in enumerate(paths):
        Image.new("RGB", (8, 8), (number, 0, 0)).save(path)
    return paths


def numbers(batches: list[torch.Tensor]) -> list[int]:
    """The image numbers of batches of ``FirstPixel`` items, in order."""
    return [int(pixel[0]) for batch in batches for pixel in batch]


def test_two_processes_with_two_workers_each_read_their_own_shards(tmp_path: Path) -> None:
    """torchrun's layout: 2 processes x 2 DataLoader workers, 4 shards of 4 images, batches of 2. Shard i (images
    4i..4i+3) goes to process i mod 2 (webdataset's split_by_node), so process 0 reads shards 0 and 2, process 1
    shards 1 and 3, every image once in an epoch between them."""
    images = numbered_images(tmp_path / "images", 16)
    write_shards(images, tmp_path / "images", tmp_path / "shards", per_shard=4)
    found = shards.read_shards(f"{tmp_path}/shards/train-{{0000..0003}}.tar")
    plan = shards.ShardPlan(found, held_out=[], batch_size=2, processes=2, workers=2, window=4)
    assert plan.steps_per_epoch == 4
    read = {}
    for rank in range(2):
        batches = shards.ShardBatches(plan, FirstPixel(), seed=0, rank=rank, start_step=0, stop_step=4)
        read[rank] = numbers(list(DataLoader(batches, batch_size=None, num_workers=2)))
    for rank in range(2):
        own_shards = [shard for shard in range(4) if shard % 2 == rank]
        assert sorted(read[rank]) == [4 * shard + k for shard in own_shards for k in range(4)], rank
    assert sorted(read[0] + read[1]) == list(range(16))


@pytest.mark.parametrize("source", ["folder", "shards"])
def test_the_explainer_commands_loaders_of_two_processes_read_every_image_once(tmp_path: Path, source: str) -> None:
    """python -m train explainer under torchrun, 2 processes x 2 workers, global batches of 4 over 16 images: each
    process's loader (its rank passed on) reads its own images, so the two read each image once per epoch."""
    images = numbered_images(tmp_path / "images", 16)
    data = str(tmp_path / "images")
    if source == "shards":
        shards.pack_folder(images, tmp_path / "images", tmp_path / "shards", per_shard=4)
        data = f"{tmp_path}/shards/train-{{0000..0003}}.tar"
    recipe = Recipe(batch_size=4, seed=3)
    args = argparse.Namespace(data=data, held_out=0, workers=2, shuffle_window=4)
    read = []
    for rank in range(2):
        processes = Processes(rank=rank, world_size=2, device=torch.device("cpu"))
        if source == "shards":
            found = explainer.shard_data(args, recipe, processes)
        else:
            found = explainer.folder_data(args, recipe)
        read.append(numbers(list(found.loader(FirstPixel(), recipe, processes, start=0, stop=4, workers=2))))
    assert len(read[0]) == len(read[1]) == 8
    assert sorted(read[0] + read[1]) == list(range(16))
