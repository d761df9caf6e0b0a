"""Bounds on every config value that decides a size, checked before any library reads the config.

timm and transformers build what a config.json asks for, and some of it is built before any
budget can count it: transformers' ``AutoConfig`` fills a label table of ``num_labels`` entries,
several families build drop-path schedules of ``sum(depths)`` values on the CPU (even on the meta
device), a preprocessing of ``size / crop_pct`` pixels runs on every image. So the JSON is read by
ptame first (``ptame.loading.untrusted``) and every value is bounded here, then the network is
built within the budget of its weights file (``ptame.loading.budget``).

Why bounds in the process, not a build in a child process with hard limits: a child would import
torch and the library again for every load (seconds on a busy CPU), ``RLIMIT_AS`` means nothing on
macOS and Windows, and it would give a verdict on a network that the parent then builds again.
Bounds, the meta-device budget and the activation count are checked in the loading process, in
milliseconds, with a message that names the value.

The generic rule covers any key, known or not: every integer within ±MAX_CONFIG_INT, every float
finite and within ±MAX_CONFIG_FLOAT, every list of numbers at most MAX_NUMBER_LIST long with its
integers summing to at most MAX_CONFIG_INT (a depth list), any other list or object of at most
MAX_CLASSES entries (label tables). The named rules are tighter: class counts, input sides,
crop_pct, mean and std, dtype.
"""

import math
from collections.abc import Iterator
from pathlib import Path

from ptame.errors import CheckpointError, describe, shorten

MAX_CLASSES = 100_000  # ImageNet-21k's 21,843 fit
MAX_CONFIG_INT = 100_000  # any integer of a config: widths, depths, class counts, sides
MAX_CONFIG_FLOAT = 1e6  # any float of a config (mlp_ratio, coefficients, epsilons)
MAX_NUMBER_LIST = 256  # a list of numbers: depths per stage, widths per stage, input_size
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 8, 1024  # pixels: the side of the image a classifier takes
MIN_CROP_PCT = 0.5  # the resize side is crop / crop_pct: at most twice the crop
MAX_MEAN = 10.0
MIN_STD, MAX_STD = 1e-3, 10.0
DTYPES = frozenset({"float32", "float16", "bfloat16", "auto"})  # a transformers config's dtype


def _values(value: object, path: str) -> Iterator[tuple[str, object]]:
    """Every value of a parsed JSON document with its dotted path, without recursion."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        yield where, item
        if isinstance(item, dict):
            stack.extend((f"{where}.{key}", child) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}[{index}]", child) for index, child in enumerate(item))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_config_sizes(config: dict[str, object], where: Path) -> None:
    """The generic rule (see the module's docstring) over every value of a config.

    Raises:
        CheckpointError: names the file, the value's path and the bound.
    """
    for path, value in _values(config, "config"):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CONFIG_INT:
            raise CheckpointError(f"{where}: {shorten(path, 120)} = {describe(value)} is over {MAX_CONFIG_INT:,}")
        if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= MAX_CONFIG_FLOAT):
            raise CheckpointError(f"{where}: {shorten(path, 120)} = {describe(value)} is over {MAX_CONFIG_FLOAT:g}")
        if isinstance(value, list) and value and all(_is_number(item) for item in value):
            total = sum(abs(item) for item in value if isinstance(item, int))
            if len(value) > MAX_NUMBER_LIST or total > MAX_CONFIG_INT:
                raise CheckpointError(
                    f"{where}: {shorten(path, 120)} is a list of {len(value):,} numbers summing to {total:,}; "
                    f"at most {MAX_NUMBER_LIST} numbers summing to {MAX_CONFIG_INT:,}"
                )
        if isinstance(value, list | dict) and len(value) > MAX_CLASSES:
            raise CheckpointError(f"{where}: {shorten(path, 120)} has {len(value):,} entries, over {MAX_CLASSES:,}")


def check_class_count(value: object, key: str, where: Path) -> None:
    """A class count (``num_labels``, ``num_classes``): None or an integer from 1 to MAX_CLASSES
    (0 is timm's "no classifier head")."""
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_CLASSES):
        raise CheckpointError(f"{where}: {key} must be a class count from 1 to {MAX_CLASSES:,}, got {describe(value)}")


def input_side(value: object, key: str, where: Path) -> int:
    """An input side: an integer from MIN_INPUT_SIDE to MAX_INPUT_SIDE pixels."""
    if not (isinstance(value, int) and not isinstance(value, bool) and MIN_INPUT_SIDE <= value <= MAX_INPUT_SIDE):
        raise CheckpointError(
            f"{where}: {key} of {describe(value)} is not a side from {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE} pixels"
        )
    return value


def crop_pct(value: object, key: str, where: Path) -> float:
    """A crop fraction (the resize side is the crop's divided by it): from MIN_CROP_PCT to 1."""
    if not (_is_number(value) and MIN_CROP_PCT <= value <= 1):
        raise CheckpointError(f"{where}: {key} must be a number from {MIN_CROP_PCT} to 1, got {describe(value)}")
    return float(value)


def mean_and_std(mean: object, std: object, where: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation values: 3 numbers each, |mean| <= MAX_MEAN and MIN_STD <= std <= MAX_STD."""
    if not (
        isinstance(mean, list | tuple)
        and isinstance(std, list | tuple)
        and len(mean) == len(std) == 3
        and all(_is_number(v) and math.isfinite(v) and abs(v) <= MAX_MEAN for v in mean)
        and all(_is_number(v) and math.isfinite(v) and MIN_STD <= v <= MAX_STD for v in std)
    ):
        raise CheckpointError(
            f"{where}: the mean and std must be 3 numbers each (|mean| <= {MAX_MEAN:g}, std from {MIN_STD:g} to "
            f"{MAX_STD:g}), got {describe(mean, 60)} and {describe(std, 60)}"
        )
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def check_transformers_config(config: dict[str, object], where: Path) -> None:
    """A transformers config.json: the generic rule, a class count, square-or-pair image sizes of
    at most MAX_INPUT_SIDE, and a dtype of DTYPES.

    Raises:
        CheckpointError: names the file and the value.
    """
    check_config_sizes(config, where)
    check_class_count(config.get("num_labels"), "num_labels", where)
    for key in ("image_size", "input_size"):
        value = config.get(key)
        for side in value if isinstance(value, list) else [] if value is None else [value]:
            input_side(side, key, where)
    for key in ("dtype", "torch_dtype"):
        if config.get(key) is not None and config[key] not in DTYPES:
            raise CheckpointError(f"{where}: {key} must be one of {sorted(DTYPES)}, got {describe(config[key])}")


def check_timm_config(config: dict[str, object], where: Path) -> None:
    """A timm config.json: the generic rule, class counts, and a pretrained_cfg whose input
    sizes, crop_pct, mean and std are within bounds.

    Raises:
        CheckpointError: names the file and the value.
    """
    check_config_sizes(config, where)
    model_args = config.get("model_args") if isinstance(config.get("model_args"), dict) else {}
    pretrained = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    for key, value in (
        ("num_classes", config.get("num_classes")),
        ("model_args.num_classes", model_args.get("num_classes")),
    ):
        check_class_count(value, key, where)
    for key in ("input_size", "test_input_size", "min_input_size"):
        value = pretrained.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 3):
            raise CheckpointError(
                f"{where}: pretrained_cfg.{key} must be [channels, height, width], got {describe(value)}"
            )
        for side in (value or [])[1:]:
            input_side(side, f"pretrained_cfg.{key}", where)
    for key in ("img_size", "image_size"):
        value = model_args.get(key)
        for side in value if isinstance(value, list) else [] if value is None else [value]:
            input_side(side, f"model_args.{key}", where)
    for key in ("crop_pct", "test_crop_pct"):
        if pretrained.get(key) is not None:
            crop_pct(pretrained[key], f"pretrained_cfg.{key}", where)
    if "mean" in pretrained or "std" in pretrained:
        mean_and_std(pretrained.get("mean"), pretrained.get("std"), where)
