"""Shared test helpers and fixtures: tiny offline models, saved checkpoints, a seeded Hugging Face
cache, generated images, tiny training runs.

Test modules take the plain helpers with ``from tests.conftest import ...`` (never from another
test module). pytest imports this file as ``tests.conftest`` (tests/ is a package, so the
repository root goes on sys.path), so that import finds the module pytest already loaded.
"""

# Offline before anything imports huggingface_hub or gradio (timm, imported below, imports
# huggingface_hub, which reads HF_HUB_OFFLINE once, at import), so that a plain
# `python -m pytest` never reaches the network:
# - HF_HUB_OFFLINE=1: huggingface_hub reads the local cache only (setdefault: an HF_HUB_OFFLINE
#   already in the environment wins).
# - GRADIO_ANALYTICS_ENABLED=False: no telemetry from gradio or gradio_client, and no version
#   check: gradio has no setting of its own for that; Blocks starts analytics.version_check (a
#   request to api.gradio.app/pkg-version) only when analytics are enabled.
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# - PTAME_CACHE: converted networks (EfficientNet-Lite0) go to a folder of this test session, removed
#   at its end, not to ~/.cache.
if "PTAME_CACHE" not in os.environ:
    os.environ["PTAME_CACHE"] = tempfile.mkdtemp(prefix="ptame-test-cache-")
    atexit.register(shutil.rmtree, os.environ["PTAME_CACHE"], ignore_errors=True)
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import argparse
import ipaddress
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models import save_for_hf
from tqdm import tqdm as tqdm_std
from tqdm.auto import tqdm as tqdm_auto

from ptame import PTAME
from ptame.datasets.shapes import SHAPE_CLASSES, SHAPES, SHAPES_MEAN, SHAPES_STD, shapes_sample
from train.commands import imagenet
from train.worlds import save_network

# Progress bars take a lock of this process only. tqdm's default lock includes a semaphore shared
# with forked processes: mutmut runs each mutant's tests in a fork and kills one that times out,
# and a fork killed while it held the lock would block every later progress bar (every later
# mutant's tests would hang until their timeout).
for bar_class in (tqdm_std, tqdm_auto):
    bar_class.set_lock(threading.RLock())

ROOT = Path(__file__).resolve().parents[1]
TRAINED_DEMO = ROOT / "checkpoints" / "shapes"  # python -m train shapes --out checkpoints/shapes
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"

# Tiny, random-initialised timm networks and 32x32 crops: a run of a few steps takes seconds.
TINY_RUN = [
    "--backbone", "test_resnet", "--auxiliary", "test_resnet", "--no-pretrained",
    "--resize", "40", "--crop", "32", "--batch-size", "4", "--steps", "4",
    "--workers", "0", "--log-every", "2", "--checkpoint-every", "2", "--no-progress",
]  # fmt: skip


# No test reaches the network: a connection to anything but this machine fails at once.


class NetworkBlocked(OSError):
    """A test tried to open a connection to another machine."""


def is_local(address: object) -> bool:
    """Whether a socket address (host, port[, ...]) names this machine (loopback or "localhost")."""
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost


@pytest.fixture(autouse=True, scope="session")
def no_network() -> object:
    """Refuse every IPv4/IPv6 connection of the test process to another machine (NetworkBlocked)."""
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address):
            raise NetworkBlocked(f"tests must not reach the network: a connection to {address} was refused")

    def guarded_connect(sock: socket.socket, address: object) -> None:
        check(sock, address)
        return connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: object) -> int:
        check(sock, address)
        return connect_ex(sock, address)

    socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex
    yield
    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex


@pytest.fixture(autouse=True)
def registry_as_found() -> object:
    """Each test leaves the method registry as it found it: the methods a test (or ``ptame explain``'s
    ``main``, which registers the installed plug-ins) adds are removed after it."""
    from ptame.methods import METHODS, unregister_method

    before = set(METHODS)
    yield
    for key in set(METHODS) - before:
        unregister_method(key)


# Models and checkpoints.


def randomise_head(explainer: PTAME) -> PTAME:
    """Draw the explainer head's parameters from N(0, 0.05^2) (from torch's global generator), so
    that its maps differ between pixels and classes."""
    for parameter in explainer.head.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    return explainer


def with_class_agnostic_rows(fuser: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """A trained fuser weight (K, C, 1, 1) as ``python -m train explainer`` saves it: the rows of the
    classes with no training image (``counts``, config.json's trained_images) set to the mean of the others."""
    trained = torch.tensor(counts) > 0
    expected = fuser.clone()
    expected[~trained] = fuser[trained].mean(dim=0)
    return expected


def save_timm_checkpoint(model: torch.nn.Module, folder: Path) -> Path:
    """Save a timm model as config.json + model.safetensors (the format timm loads from)."""
    save_for_hf(model, str(folder), safe_serialization=True)
    (folder / "pytorch_model.bin").unlink(missing_ok=True)
    return folder


def seed_hf_cache(cache: Path, repo_id: str, source: Path, revisions: tuple[str, ...] = ("main",)) -> Path:
    """Lay out ``source``'s files in ``cache`` as huggingface_hub's cache of ``repo_id``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / FAKE_COMMIT
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True)
    for revision in revisions:
        (repo / "refs" / revision).write_text(FAKE_COMMIT)
    return cache


def peak_rss_mb(work: Callable[[], object]) -> tuple[float, float]:
    """(seconds, peak resident MB above the resident size before) of ``work()``, errors ignored."""

    def status(field: str) -> float:
        return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())[1]) / 1024

    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current size
    before, start = status("VmRSS"), time.perf_counter()
    try:
        work()
    except Exception:  # noqa: BLE001 - the caller checks the error
        pass
    return time.perf_counter() - start, status("VmHWM") - before


def random_shapes_demo(folder: Path) -> Path:
    """A model folder laid out as `python -m train shapes` writes the demo (classifier/, auxiliary/,
    explainer/), with the same networks and seeded random weights. Its key is the folder's name."""
    torch.manual_seed(0)
    classes = len(SHAPE_CLASSES)
    recipe = SHAPES.recipe
    for part, architecture, arguments in (
        ("classifier", recipe.classifier, recipe.classifier_args),
        ("auxiliary", recipe.auxiliary, recipe.auxiliary_args),
    ):
        network = timm.create_model(architecture, pretrained=False, num_classes=classes, **arguments)
        save_network(network, folder / part, SHAPES)
    explainer = PTAME(
        num_classes=classes,
        auxiliary="local-dir:../auxiliary",
        feature_levels=recipe.feature_levels,
        auxiliary_mean=SHAPES_MEAN,
        auxiliary_std=SHAPES_STD,
        class_names=SHAPE_CLASSES,
        auxiliary_root=folder / "explainer",
    )
    randomise_head(explainer).save_pretrained(folder / "explainer")
    return folder


@pytest.fixture(scope="session")
def auxiliary_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised ResNet-18 saved in timm's folder format."""
    torch.manual_seed(0)
    return save_timm_checkpoint(timm.create_model("resnet18", num_classes=10), tmp_path_factory.mktemp("auxiliary"))


@pytest.fixture
def explainer(auxiliary_folder: Path) -> PTAME:
    """A 10-class explainer on the saved ResNet-18, with a randomised head."""
    torch.manual_seed(1)
    model = randomise_head(PTAME(num_classes=10, auxiliary=f"local-dir:{auxiliary_folder}"))
    for level in model.head.levels:
        level.norm.running_mean.normal_()
        level.norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


# Images.


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Uniform random RGB pixels, (height, width, 3) uint8, from a generator seeded with ``seed``."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def shapes_pixels(index: int) -> np.ndarray:
    """Shapes-world test image ``index`` at 128 x 128, as (H, W, 3) uint8 (as its PNG file holds it)."""
    return shapes_sample(index, "test", 128).picture()


def shapes_file(folder: Path, index: int, name: str | None = None) -> Path:
    """Save shapes-world test image ``index`` (128 x 128) as folder/name, by default
    folder/shapes-INDEX.png (the format follows the name's suffix); folders are created."""
    path = folder / (name or f"shapes-{index}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(shapes_pixels(index)).save(path)
    return path


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A small valid PNG whose header is rewritten to claim width x height: a decompression bomb."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def make_image_tree(root: Path, classes: int = 3, per_class: int = 6) -> Path:
    """ImageNet's layout in miniature: root/train/CLASS/*.jpg|png, noise images of varied sizes."""
    generator = np.random.default_rng(0)
    for label in range(classes):
        folder = root / "train" / f"n{label:08d}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = generator.integers(0, 256, (36 + index, 44, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"image{index}.{'png' if index % 2 else 'jpg'}")
    return root


# Commands, ports and threads.


def run_command(module: ModuleType, argv: list[str]) -> None:
    """``python -m train NAME argv`` for one command module."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    module.run(parser.parse_args(argv))


def train_tiny(data: Path, out: Path, *extra: str) -> None:
    """``python -m train imagenet`` with TINY_RUN on ``data``, into ``out``."""
    run_command(imagenet, [*TINY_RUN, "--data", str(data), "--out", str(out), *extra])


def run_in_threads(work: Callable[[int], object], count: int) -> None:
    """Call work(0), ..., work(count - 1), each in a thread of its own, all started before any is
    joined; returns when all have finished."""
    threads = [threading.Thread(target=work, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
