from pathlib import Path

import pytest
import torch
from PIL import Image

from ptame.loading.backbones import Preprocessing
from train.data import (
    ImageFiles,
    TrainImages,
    TrainingOrder,
    TrainTransform,
    augmentation_seed,
    image_files,
)


def write_images(root: Path, names: list[str], size: tuple[int, int] = (20, 16)) -> list[Path]:
    paths = []
    for index, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (index * 7 % 256, 40, 90)).save(path)
        paths.append(path)
    return paths


def test_image_files_are_sorted_images_at_any_depth(tmp_path: Path) -> None:
    write_images(tmp_path, ["b/2.png", "a/1.JPEG", "a/sub/0.jpg", "c.bmp"])
    (tmp_path / "notes.txt").write_text("not an image")
    found = [path.relative_to(tmp_path).as_posix() for path in image_files(tmp_path)]
    assert found == ["a/1.JPEG", "a/sub/0.jpg", "b/2.png", "c.bmp"]


def test_image_files_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_files(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no image files"):
        image_files(tmp_path)


def test_image_files_dataset_gives_pixels_and_names_unreadable_files(tmp_path: Path) -> None:
    good = write_images(tmp_path, ["good.png"])[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    dataset = ImageFiles([good, broken], Preprocessing(resize=12, crop=8).transform())
    pixels = dataset[0]
    assert type(pixels) is torch.Tensor
    assert pixels.shape == (3, 8, 8) and 0 <= pixels.min() and pixels.max() <= 1
    with pytest.raises(ValueError, match="broken.jpg"):
        dataset[1]


def test_train_transform_depends_only_on_the_seed(tmp_path: Path) -> None:
    image = Image.effect_noise((40, 30), 60).convert("RGB")
    transform = TrainTransform(resize=24, crop=16)
    first = transform(image, torch.Generator().manual_seed(5))
    assert first.shape == (3, 16, 16) and first.dtype == torch.float32 and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, transform(image, torch.Generator().manual_seed(5)))
    others = [transform(image, torch.Generator().manual_seed(seed)) for seed in range(6)]
    assert any(not torch.equal(first, other) for other in others)
    with pytest.raises(ValueError, match="larger than resize"):
        TrainTransform(resize=16, crop=24)


def steps_of(order: TrainingOrder) -> list[list[tuple[int, int]]]:
    items = list(order)
    size = order.local_batch_size
    return [items[start : start + size] for start in range(0, len(items), size)]


def test_training_order_is_the_same_global_batches_for_any_process_count() -> None:
    single = steps_of(TrainingOrder(10, 4, total_steps=5, seed=3))
    ranks = [steps_of(TrainingOrder(10, 4, total_steps=5, seed=3, rank=rank, world_size=2)) for rank in range(2)]
    assert len(single) == 5
    assert [first + second for first, second in zip(*ranks)] == single


def test_training_order_covers_each_epoch_once_and_resumes_exactly() -> None:
    order = TrainingOrder(10, 4, total_steps=5, seed=3)
    steps = steps_of(order)
    epoch0 = [index for step in steps[:2] for index, _ in step]  # 10 // 4 = 2 steps per epoch
    epoch1 = [index for step in steps[2:4] for index, _ in step]
    assert len(set(epoch0)) == len(set(epoch1)) == 8
    assert epoch0 != epoch1
    assert steps[0][0][1] == augmentation_seed(3, 0, steps[0][0][0])
    assert steps_of(TrainingOrder(10, 4, total_steps=5, seed=3, start_step=3)) == steps[3:]
    assert steps_of(TrainingOrder(10, 4, total_steps=5, seed=4)) != steps


def test_training_order_rejects_impossible_splits() -> None:
    with pytest.raises(ValueError, match="does not split evenly"):
        TrainingOrder(10, 4, total_steps=2, seed=0, world_size=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        TrainingOrder(3, 4, total_steps=2, seed=0)


def test_train_images_reads_by_index_and_seed(tmp_path: Path) -> None:
    paths = write_images(tmp_path, ["a.png", "b.png"], size=(30, 20))
    dataset = TrainImages(paths, TrainTransform(resize=20, crop=12))
    assert torch.equal(dataset[(1, 9)], dataset[(1, 9)])
    assert dataset[(0, 9)].shape == (3, 12, 12)
