"""ImageNet val in torchvision's order, and the P-TAME paper's fixed subsets of it.

The paper (Ntrougkas, Mezaris, Patras, OJSP 2025) selects models on a fixed 2000-image "val" subset
of ImageNet val and reports its figures on a disjoint fixed 2000-image "test" subset. Both lists
come from the official code (IDT-ITI/P-TAME, src/ptame/datalists/val_set.pt and test_set.pt at
commit 9576ec8) and are stored in imagenet_val_subsets.json beside this module, each in its source
file's order. An index counts the 50,000 ImageNet val images in the order of
``torchvision.datasets.ImageNet(split="val")``: class folders sorted by WordNet id (wnid), files
sorted by name within each folder (torchvision's ImageFolder order, ``find_classes`` +
``make_dataset``).

Two layouts of the val images are read:

- class folders (ROOT/n01440764/ILSVRC2012_val_00000293.JPEG ...), as torchvision's ImageNet makes;
- flat (ROOT/ILSVRC2012_val_00000001.JPEG ...), as the official archive unpacks, with the labels
  from the ILSVRC2012 devkit folder or from a CSV file (``file,wnid`` rows, or Kaggle's
  LOC_val_solution.csv). Its order is by (wnid, file name), the order torchvision's gives once its
  devkit has moved the files into wnid folders.
"""

import csv
import json
import os
import re
from pathlib import Path

import scipy.io
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension, make_dataset

SUBSETS_FILE = Path(__file__).with_name("imagenet_val_subsets.json")
SUBSET_NAMES = ("val", "test")
VAL_IMAGES = 50_000
_WNID = re.compile(r"n\d{8}")


def subset_indices(name: str) -> list[int]:
    """The indices of a paper subset, "val" (model selection) or "test" (reported figures), in the file's order.

    Raises:
        ValueError: unknown subset name.
    """
    if name not in SUBSET_NAMES:
        raise ValueError(f"subset must be one of {SUBSET_NAMES}, not {name!r}")
    return json.loads(SUBSETS_FILE.read_text())[name]


def _devkit_labels(devkit: Path, files: list[Path]) -> dict[str, str]:
    """File name -> wnid from the ILSVRC2012 devkit, as torchvision's ``parse_devkit_archive`` and
    ``parse_val_archive`` read it: line n of the ground truth labels the n-th file by name."""
    meta_file = devkit / "data" / "meta.mat"
    truth_file = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    for path in (meta_file, truth_file):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: pass the ILSVRC2012_devkit_t12 folder as the labels")
    synsets = scipy.io.loadmat(meta_file, squeeze_me=True)["synsets"]
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if s["num_children"] == 0}
    ids = [int(line) for line in truth_file.read_text().split()]
    if len(ids) != len(files):
        raise ValueError(f"{truth_file} labels {len(ids)} images, but the image folder holds {len(files)}")
    unknown = sorted(set(ids) - set(id_to_wnid))
    if unknown:
        raise ValueError(f"{truth_file} holds class ids {unknown[:5]} that {meta_file} does not name as a class")
    names = sorted(path.name for path in files)
    return {name: id_to_wnid[ilsvrc_id] for name, ilsvrc_id in zip(names, ids)}


def _csv_labels(csv_file: Path, files: list[Path]) -> dict[str, str]:
    """File name -> wnid from a CSV of ``file,wnid`` rows or Kaggle's ``ImageId,PredictionString``
    (which starts with the wnid); a file matches a row by name or by stem. Rows whose second field
    does not start with a wnid (headers) are skipped."""
    with csv_file.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if len(row) >= 2 and _WNID.match(row[1].strip())]
    by_key = {row[0].strip(): _WNID.match(row[1].strip()).group() for row in rows}
    labels = {}
    for path in files:
        key = path.name if path.name in by_key else path.stem
        if key not in by_key:
            raise ValueError(f"{csv_file} has no label for {path}: it must list every image of the folder")
        labels[path.name] = by_key.pop(key)
    if by_key:
        raise ValueError(f"{csv_file} labels {len(by_key)} images not in {files[0].parent}, e.g. {next(iter(by_key))}")
    return labels


def val_images(root: Path, labels: Path | None = None) -> list[Path]:
    """The 50,000 ImageNet val image files in the order of ``torchvision.datasets.ImageNet(split="val")``.

    Args:
        root: the val folder, of wnid class folders (read with torchvision's own ``find_classes``
            and ``make_dataset``) or of the image files directly (flat).
        labels: for a flat folder only: the ILSVRC2012_devkit_t12 folder (data/meta.mat and
            data/ILSVRC2012_validation_ground_truth.txt) or a CSV file of ``file,wnid`` rows
            (Kaggle's LOC_val_solution.csv works); the files are then ordered by (wnid, file name).

    Raises:
        FileNotFoundError: ``root`` or ``labels`` does not exist, or a devkit file is missing.
        ValueError: ``root`` holds neither layout, ``labels`` is missing or given for class
            folders, a file has no label or a label no file, or the images are not 50,000.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet val folder {root} does not exist")
    entries = list(os.scandir(root))
    if any(entry.is_dir() and _WNID.fullmatch(entry.name) for entry in entries):
        if labels is not None:
            raise ValueError(f"{root} holds class folders, which are the labels: do not pass labels ({labels})")
        _, class_to_idx = find_classes(root)
        images = [Path(path) for path, _ in make_dataset(root, class_to_idx, IMG_EXTENSIONS)]
    else:
        files = [root / e.name for e in entries if e.is_file() and has_file_allowed_extension(e.name, IMG_EXTENSIONS)]
        if not files:
            raise ValueError(f"{root} holds neither wnid class folders (n01440764/ ...) nor image files")
        if labels is None:
            raise ValueError(
                f"{root} holds the images without class folders: pass the labels, the ILSVRC2012_devkit_t12 "
                "folder or a CSV file of file,wnid rows (e.g. Kaggle's LOC_val_solution.csv)"
            )
        labels = Path(labels)
        if not labels.exists():
            raise FileNotFoundError(f"labels {labels} do not exist: pass the devkit folder or a CSV file")
        wnids = _devkit_labels(labels, files) if labels.is_dir() else _csv_labels(labels, files)
        images = sorted(files, key=lambda path: (wnids[path.name], path.name))
    if len(images) != VAL_IMAGES:
        raise ValueError(
            f"{root} holds {len(images)} images, not ImageNet val's {VAL_IMAGES}: the paper's subset "
            "indices only mean its images on the full ImageNet val"
        )
    return images


def paper_subset(root: Path, name: str, labels: Path | None = None) -> list[Path]:
    """The image files of a paper subset ("val" or "test"), in the subset's order.

    Args:
        root: the ImageNet val folder (see ``val_images``).
        name: "val" (model selection) or "test" (reported figures).
        labels: the labels of a flat folder (see ``val_images``).

    Raises:
        ValueError, FileNotFoundError: as ``subset_indices`` and ``val_images``.
    """
    indices = subset_indices(name)
    images = val_images(root, labels)
    return [images[index] for index in indices]
