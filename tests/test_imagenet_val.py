"""ImageNet val in torchvision's order and the paper's subsets, on a fake val of 50,000 empty files.

Expectations come from how the fake is built (class i // 50 in sorted wnid order, file i % 50 in
sorted name order) and from torchvision's own ImageNet dataset, never from train.imagenet_val.
"""

import csv
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torchvision.datasets import ImageNet

from train.imagenet_val import SUBSET_NAMES, SUBSETS_FILE, paper_subset, subset_indices, val_images

CLASSES, PER_CLASS = 1000, 50
SYNSET_FIELDS = (
    "ILSVRC2012_ID",
    "WNID",
    "words",
    "gloss",
    "num_children",
    "children",
    "wordnet_height",
    "num_train_images",
)


@dataclass(frozen=True)
class FakeVal:
    folders: Path  # class-folder layout: folders/WNID/NAME
    flat: Path  # the same file names, flat: flat/NAME
    classes: dict[str, list[str]]  # wnid -> its file names, both in the (shuffled) order created
    expected: list[tuple[str, str]]  # (wnid, file name) of each val index in torchvision's order


def fake_classes(seed: int) -> dict[str, list[str]]:
    """1000 distinct random wnids (unsorted) of 50 file names each, numbers 1..50,000 assigned by a permutation."""
    rng = random.Random(seed)
    wnids = [f"n{number:08d}" for number in rng.sample(range(10**8), CLASSES)]
    numbers = rng.sample(range(1, CLASSES * PER_CLASS + 1), CLASSES * PER_CLASS)
    return {
        wnid: [f"ILSVRC2012_val_{number:08d}.JPEG" for number in numbers[i * PER_CLASS : (i + 1) * PER_CLASS]]
        for i, wnid in enumerate(wnids)
    }


def write_folders(root: Path, classes: dict[str, list[str]]) -> None:
    for wnid, names in classes.items():
        (root / wnid).mkdir(parents=True)
        for name in names:
            (root / wnid / name).touch()


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeVal:
    base = tmp_path_factory.mktemp("imagenet")
    classes = fake_classes(seed=7)
    write_folders(base / "val", classes)
    flat = base / "flat"
    flat.mkdir()
    flat_names = [name for names in classes.values() for name in names]
    for name in random.Random(8).sample(flat_names, len(flat_names)):
        (flat / name).touch()
    # torchvision's ImageNet(split="val") reads base/meta.bin (wnid -> class names) and base/val.
    torch.save(({wnid: (wnid,) for wnid in classes}, []), base / "meta.bin")
    wnids = sorted(classes)
    names = {wnid: sorted(classes[wnid]) for wnid in wnids}
    expected = [
        (wnids[i // PER_CLASS], names[wnids[i // PER_CLASS]][i % PER_CLASS]) for i in range(CLASSES * PER_CLASS)
    ]
    return FakeVal(folders=base / "val", flat=flat, classes=classes, expected=expected)


def expected_names(fake: FakeVal) -> list[str]:
    return [name for _, name in fake.expected]


def test_class_folders_are_in_torchvision_order(fake: FakeVal) -> None:
    images = val_images(fake.folders)
    assert images == [fake.folders / wnid / name for wnid, name in fake.expected]
    assert [Path(path) for path, _ in ImageNet(fake.folders.parent, split="val").samples] == images
    names = [path.name for path in images]
    assert names != sorted(names)  # the fake's file-name order is not torchvision's


def test_paper_subsets_are_the_files_at_their_indices(fake: FakeVal) -> None:
    stored = json.loads(SUBSETS_FILE.read_text())
    assert SUBSET_NAMES == ("val", "test")
    for name in SUBSET_NAMES:
        indices = stored[name]
        assert subset_indices(name) == indices
        assert len(indices) == len(set(indices)) == 2000 and all(0 <= i < CLASSES * PER_CLASS for i in indices)
        paths = paper_subset(fake.folders, name)
        assert paths == [fake.folders.joinpath(*fake.expected[index]) for index in indices]
    assert not set(stored["val"]) & set(stored["test"])
    # Literal entries: test[0] = 12411 = 248 * 50 + 11, val[0] = 16635 = 332 * 50 + 35.
    assert stored["test"][0] == 12411 and stored["val"][0] == 16635
    wnids = sorted(fake.classes)
    assert paper_subset(fake.folders, "test")[0] == fake.folders / wnids[248] / sorted(fake.classes[wnids[248]])[11]
    assert paper_subset(fake.folders, "val")[0] == fake.folders / wnids[332] / sorted(fake.classes[wnids[332]])[35]


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def label_rows(fake: FakeVal, kaggle: bool) -> list[list[str]]:
    """One row per image, in a shuffled order: ``name,wnid`` or Kaggle's ``stem,"wnid x y x y ..."``."""
    rows = [
        [name.removesuffix(".JPEG"), f"{wnid} 10 20 110 120 {wnid} 5 5 50 50"] if kaggle else [name, wnid]
        for wnid, names in fake.classes.items()
        for name in names
    ]
    return random.Random(9).sample(rows, len(rows))


@pytest.mark.parametrize("kaggle", [False, True], ids=["file-wnid", "kaggle"])
def test_flat_folder_with_csv_labels_is_in_torchvision_order(fake: FakeVal, tmp_path: Path, kaggle: bool) -> None:
    header = ["ImageId", "PredictionString"] if kaggle else ["file", "wnid"]
    labels = write_csv(tmp_path / "labels.csv", [header, *label_rows(fake, kaggle)])
    images = val_images(fake.flat, labels)
    assert [path.name for path in images] == expected_names(fake)
    assert {path.parent for path in images} == {fake.flat}
    assert paper_subset(fake.flat, "test", labels)[0].name == fake.expected[12411][1]


def write_devkit(devkit: Path, fake: FakeVal) -> dict[int, str]:
    """A fake ILSVRC2012_devkit_t12: returns its leaf ILSVRC2012_ID -> WNID map."""
    rng = random.Random(10)
    leaf_ids = rng.sample(range(1, CLASSES + 1), CLASSES)  # not in wnid order
    id_to_wnid = dict(zip(leaf_ids, sorted(fake.classes)))
    entries = [(ilsvrc_id, wnid, 0) for ilsvrc_id, wnid in id_to_wnid.items()]
    # Non-leaf synsets, to be ignored. The real file numbers them 1001-1860; these reuse leaf ids,
    # so that reading them would mislabel images.
    entries += [(leaf_ids[k], f"n{99990000 + k:08d}", 3) for k in range(10)]
    rng.shuffle(entries)
    synsets = np.empty((len(entries), 1), dtype=[(field, object) for field in SYNSET_FIELDS])
    for row, (ilsvrc_id, wnid, num_children) in enumerate(entries):
        children = np.arange(1, num_children + 1, dtype=np.uint16)
        synsets[row, 0] = (ilsvrc_id, wnid, f"{wnid} words, more", "a gloss", num_children, children, 0, 1300)
    (devkit / "data").mkdir(parents=True)
    scipy.io.savemat(devkit / "data" / "meta.mat", {"synsets": synsets})
    wnid_of = {name: wnid for wnid, names in fake.classes.items() for name in names}
    ids_of = {wnid: ilsvrc_id for ilsvrc_id, wnid in id_to_wnid.items()}
    truth = [ids_of[wnid_of[name]] for name in sorted(wnid_of)]
    (devkit / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in truth))
    return id_to_wnid


@pytest.fixture(scope="module")
def devkit(fake: FakeVal, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("devkit") / "ILSVRC2012_devkit_t12"
    id_to_wnid = write_devkit(root, fake)
    # Read back the way torchvision's parse_devkit_archive reads the real meta.mat: fields by position.
    meta = scipy.io.loadmat(root / "data" / "meta.mat", squeeze_me=True)["synsets"]
    assert meta.dtype.names[:5] == ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children")
    nums_children = list(zip(*meta))[4]
    leaves = [meta[i] for i, num_children in enumerate(nums_children) if num_children == 0]
    ids, wnids, words = list(zip(*leaves))[:3]
    assert len(meta) == CLASSES + 10 and dict(zip(ids, wnids)) == id_to_wnid
    assert tuple(words[0].split(", ")) == (f"{wnids[0]} words", "more")
    return root


def test_flat_folder_with_devkit_is_in_torchvision_order(fake: FakeVal, devkit: Path) -> None:
    assert [path.name for path in val_images(fake.flat, devkit)] == expected_names(fake)


def test_devkit_errors_name_the_missing_or_short_file(fake: FakeVal, devkit: Path, tmp_path: Path) -> None:
    truth = "ILSVRC2012_validation_ground_truth.txt"
    (tmp_path / "data").mkdir()
    shutil.copy(devkit / "data" / truth, tmp_path / "data" / truth)
    with pytest.raises(FileNotFoundError, match="meta.mat"):
        val_images(fake.flat, tmp_path)
    shutil.copy(devkit / "data" / "meta.mat", tmp_path / "data" / "meta.mat")
    lines = (devkit / "data" / truth).read_text().splitlines()
    (tmp_path / "data" / truth).write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="labels 49999 images, but the image folder holds 50000"):
        val_images(fake.flat, tmp_path)
    (tmp_path / "data" / truth).unlink()
    with pytest.raises(FileNotFoundError, match=truth):
        val_images(fake.flat, tmp_path)


def test_csv_must_label_exactly_the_files(fake: FakeVal, tmp_path: Path) -> None:
    rows = label_rows(fake, kaggle=False)
    missing = write_csv(tmp_path / "missing.csv", rows[1:])
    with pytest.raises(ValueError, match=f"no label for .*{rows[0][0]}"):
        val_images(fake.flat, missing)
    extra = write_csv(tmp_path / "extra.csv", [*rows, ["ILSVRC2012_val_00050001.JPEG", rows[0][1]]])
    with pytest.raises(ValueError, match="labels 1 images not in"):
        val_images(fake.flat, extra)


def test_not_the_full_val_is_refused(fake: FakeVal, tmp_path: Path) -> None:
    classes = {wnid: list(names) for wnid, names in fake.classes.items()}
    classes[next(iter(classes))].pop()
    write_folders(tmp_path / "val", classes)
    with pytest.raises(ValueError, match="holds 49999 images, not ImageNet val's 50000"):
        val_images(tmp_path / "val")


def test_layout_and_name_errors(fake: FakeVal, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'val', 'test'"):
        subset_indices("validation")
    with pytest.raises(ValueError, match="'val', 'test'"):
        paper_subset(fake.folders, "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        val_images(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither wnid class folders"):
        val_images(tmp_path)
    with pytest.raises(ValueError, match="pass the labels, the ILSVRC2012_devkit_t12 folder or a CSV"):
        val_images(fake.flat)
    with pytest.raises(FileNotFoundError, match="labels .* do not exist"):
        val_images(fake.flat, tmp_path / "labels.csv")
    with pytest.raises(ValueError, match="do not pass labels"):
        val_images(fake.folders, tmp_path / "labels.csv")
