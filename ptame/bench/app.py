"""Benchmark of the demo app, offline, on this machine's CPU.

    python -m ptame.bench.app [--requests 5] [--repeats 5]

Measured in one run and printed against the targets:
1. start-up: ``python app.py`` (HF_HUB_OFFLINE=1) from process start until its URL answers;
2. a shapes-demo request through gradio_client computing P-TAME, Grad-CAM and Score-CAM for a
   test image the app has not seen (no cache hit): median wall time;
3. switching the explained class (as a click in the gallery does): /explain_class for P-TAME and
   Grad-CAM, a class not explained before, after an /explain of the same image: median wall time
   (P-TAME needs no model run, Grad-CAM one forward and one backward pass);
4. P-TAME on a random-initialised ResNet-50 (ResNet-18 auxiliary, 224x224, batch 1) through the
   app's session, with the app's torch thread count: classifier pass, every class's P-TAME map,
   the top-1 map; median wall time of new images (no cache hit).
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from ptame.datasets.shapes import shapes_sample
from ptame.explainer import PTAME
from ptame.loading.backbones import create_backbone
from ptame.serving.images import read_image
from ptame.serving.lanes import threads_per_lane
from ptame.serving.loader import LoadedModel
from ptame.serving.manifest import ModelEntry
from ptame.serving.models import ModelRegistry
from ptame.serving.session import ExplainSession

ROOT = Path(__file__).resolve().parents[2]
TARGET_STARTUP_S = 15.0
TARGET_SHAPES_REQUEST_S = 2.0
TARGET_CLASS_SWITCH_S = 0.3
TARGET_RESNET50_PTAME_S = 0.5
STARTUP_LIMIT_S = 120.0


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(port: int) -> tuple[subprocess.Popen, float]:
    """Start ``python app.py`` offline; returns the process and the seconds until its URL answered.

    Raises:
        RuntimeError: the app exited or did not answer within STARTUP_LIMIT_S.
    """
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "0",
    }
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py")],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - start < STARTUP_LIMIT_S:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with status {process.returncode} before serving")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return process, time.perf_counter() - start
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.terminate()
    raise RuntimeError(f"app.py did not answer on {url} within {STARTUP_LIMIT_S:.0f} s")


def shapes_request_seconds(port: int, requests: int, folder: Path) -> list[float]:
    """Wall times of /explain requests (P-TAME, Grad-CAM, Score-CAM) on unseen shapes test images."""
    from gradio_client import Client, handle_file

    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    client.predict(handle_file(_shapes_file(folder, 999)), "shapes", ["ptame"], api_name="/explain")  # warm-up
    seconds = []
    for index in range(requests):
        path = _shapes_file(folder, 1000 + index)
        start = time.perf_counter()
        client.predict(handle_file(path), "shapes", ["ptame", "gradcam", "scorecam"], api_name="/explain")
        seconds.append(time.perf_counter() - start)
    return seconds


def class_switch_seconds(port: int, images: int, folder: Path) -> list[float]:
    """Wall times of /explain_class (P-TAME, Grad-CAM) for the 2nd to 4th classes of unseen shapes images.

    As a browser switches the class: the image is uploaded once, and the answer's images are not
    downloaded (a browser fetches the overlays it shows as they arrive; gradio_client would download
    every output file, gallery included, before returning).
    """
    from gradio_client import Client, handle_file

    client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
    seconds = []
    for index in range(images):
        path = handle_file(_shapes_file(folder, 2000 + index))
        first = client.predict(path, "shapes", ["ptame", "gradcam"], api_name="/explain")
        ranked = [int(choice[1]) for choice in first[1]["choices"]]
        for class_index in ranked[1:4]:
            start = time.perf_counter()
            client.predict(path, "shapes", class_index, ["ptame", "gradcam"], api_name="/explain_class")
            seconds.append(time.perf_counter() - start)
    return seconds


def _shapes_file(folder: Path, index: int) -> str:
    path = folder / f"shapes-{index}.png"
    Image.fromarray(shapes_sample(index, "test", 128).picture()).save(path)
    return str(path)


def resnet50_ptame_seconds(repeats: int) -> dict[str, list[float]]:
    """Wall times on a random-initialised ResNet-50, new images: the whole step (classifier pass,
    every class's P-TAME map, the top-1 map), and the classifier's and the explainer's passes."""
    torch.manual_seed(0)
    torch.set_num_threads(threads_per_lane())  # as app.py runs
    backbone = create_backbone("resnet50", pretrained=False)
    explainer = PTAME(num_classes=1000, pretrained_auxiliary=False).eval()
    entry = ModelEntry("resnet50-random", "ResNet-50 (random)", "resnet50", "unused", None)
    loaded = LoadedModel(entry=entry, backbone=backbone, explainer=explainer)
    registry = ModelRegistry([entry], loader=lambda _entry, _device: loaded)
    registry.load(entry.key)
    session = ExplainSession(registry, lane_threads=threads_per_lane())  # as app.py runs
    rng = np.random.default_rng(0)
    images = [
        read_image(Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))) for _ in range(repeats + 1)
    ]
    seconds: dict[str, list[float]] = {"total": [], "classifier": [], "explainer": []}
    for image in images:
        start = time.perf_counter()
        analysis = session.analyse(image, entry.key)
        session.explain(image, entry.key, analysis.top(1)[0], "ptame")
        seconds["total"].append(time.perf_counter() - start)
        seconds["classifier"].append(analysis.predict_seconds)
        seconds["explainer"].append(analysis.ptame_seconds)
    return {part: values[1:] for part, values in seconds.items()}  # the first image warms up


def report(name: str, seconds: float, target: float) -> None:
    verdict = "ok" if seconds <= target else "MISSED"
    print(f"{name:<58} {seconds:>8.3f} s   target <= {target:g} s   {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5, help="shapes-demo requests to time")
    parser.add_argument("--repeats", type=int, default=5, help="ResNet-50 P-TAME runs to time")
    args = parser.parse_args()
    print(f"CPU, {os.cpu_count()} cores visible, torch threads as app.py sets them: {threads_per_lane()}")
    port = free_port()
    process, startup = start_app(port)
    try:
        with tempfile.TemporaryDirectory() as folder:
            shapes = shapes_request_seconds(port, args.requests, Path(folder))
            switches = class_switch_seconds(port, args.requests, Path(folder))
    finally:
        process.terminate()
        process.wait(timeout=30)
    report("python app.py: start until the URL answers (offline)", startup, TARGET_STARTUP_S)
    report(
        f"shapes request, P-TAME + Grad-CAM + Score-CAM (median of {len(shapes)})",
        statistics.median(shapes),
        TARGET_SHAPES_REQUEST_S,
    )
    report(
        f"switch the class: P-TAME + Grad-CAM of a new class (median of {len(switches)})",
        statistics.median(switches),
        TARGET_CLASS_SWITCH_S,
    )
    resnet = resnet50_ptame_seconds(args.repeats)
    count = len(resnet["total"])
    report(
        f"random ResNet-50 224x224: predict + P-TAME (median of {count})",
        statistics.median(resnet["total"]),
        TARGET_RESNET50_PTAME_S,
    )
    print(
        f"  of which the classifier's pass {statistics.median(resnet['classifier']):.3f} s, "
        f"P-TAME's pass (all 1000 classes) {statistics.median(resnet['explainer']):.3f} s"
    )


if __name__ == "__main__":
    main()
