"""ZeroGPU (ptame/serving/gpu.py): model work in spaces.GPU-decorated calls on ZeroGPU, plain calls elsewhere.

ZeroGPU itself cannot run here (it needs Hugging Face's scheduler and a GPU). Its semantics are simulated by a
stand-in ``spaces`` package (FAKE_SPACES): ``spaces.GPU`` runs the function in a forked process that receives its
arguments and sends back its result pickled, as ZeroGPU's worker does, so nothing the function changes in memory
comes back and an argument that cannot be pickled fails as it would there.
"""

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from ptame.bench.app import free_port
from ptame.methods import get_method
from ptame.metrics import deletion_insertion
from ptame.serving import gpu, session
from ptame.serving.images import read_image
from ptame.serving.lanes import Lanes
from ptame.serving.loader import load_model
from ptame.serving.manifest import ModelEntry
from ptame.serving.models import ModelRegistry
from tests.conftest import ROOT, TRAINED_DEMO, shapes_file

FAKE_SPACES = '''
"""A stand-in for Hugging Face's spaces package on ZeroGPU (tests/test_serving_gpu.py)."""
import multiprocessing
import os

CALLS = []  # (function name, duration) of every call, in this process


def GPU(task=None, *, duration=None, size=None):
    """Run ``task`` in a forked worker: arguments and result pickled through a pipe, as ZeroGPU does."""

    def decorate(function):
        def run_in_worker(*args, **kwargs):
            context = multiprocessing.get_context("fork")
            to_worker, in_worker = context.Pipe()

            def worker():
                import torch

                torch.set_num_threads(1)
                call_args, call_kwargs = in_worker.recv()
                try:
                    in_worker.send(("ok", function(*call_args, **call_kwargs)))
                except Exception as error:
                    in_worker.send(("error", error))

            process = context.Process(target=worker, daemon=True)
            process.start()
            to_worker.send((args, kwargs))
            kind, value = to_worker.recv()
            process.join()
            CALLS.append((function.__name__, duration))
            log = os.environ.get("FAKE_SPACES_LOG")
            if log:
                with open(log, "a") as handle:
                    handle.write(f"{function.__name__} {duration}\\n")
            if kind == "error":
                raise value
            return value

        return run_in_worker

    return decorate(task) if callable(task) else decorate
'''


def write_fake_spaces(folder: Path) -> Path:
    """FAKE_SPACES as folder/spaces/__init__.py; returns ``folder`` (for sys.path or PYTHONPATH)."""
    (folder / "spaces").mkdir(parents=True)
    (folder / "spaces" / "__init__.py").write_text(textwrap.dedent(FAKE_SPACES))
    return folder


@pytest.fixture
def fake_zero_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """This process on simulated ZeroGPU: SPACES_ZERO_GPU=true and the stand-in ``spaces``; yields that module."""
    monkeypatch.syspath_prepend(str(write_fake_spaces(tmp_path / "fake")))
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    monkeypatch.setenv(gpu.ZERO_GPU_ENV, "true")
    gpu._gpu_call.cache_clear()
    import spaces

    assert spaces.__file__.startswith(str(tmp_path))
    yield spaces
    gpu._gpu_call.cache_clear()
    gpu._shared.clear()


@pytest.fixture(scope="module")
def demo() -> object:
    """The trained shapes demo, loaded on the CPU."""
    return load_model(ModelEntry.from_folder(TRAINED_DEMO))


def test_off_zero_gpu_a_call_is_a_plain_call_and_spaces_is_not_imported(
    monkeypatch: pytest.MonkeyPatch, demo: object, tmp_path: Path
) -> None:
    monkeypatch.delenv(gpu.ZERO_GPU_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "spaces", None)  # importing it would fail
    assert not gpu.zero_gpu() and gpu.serving_device("cpu") == "cpu"
    pixels = torch.rand(1, 3, 8, 8)
    assert gpu.on_gpu(torch.flip, pixels, dims=(3,)).data_ptr() != pixels.data_ptr()
    reports: list[tuple[int, int]] = []
    analysis = session._analyse(demo, read_image(str(shapes_file(tmp_path, 3))))
    explanation = gpu.on_gpu(
        session._run, get_method("scorecam"), demo, analysis, 0, lambda *done: reports.append(done)
    )
    assert explanation.saliency.shape == (128, 128) and reports  # the callback is called as is
    for value in ("1", "t", "TRUE", "true"):
        monkeypatch.setenv(gpu.ZERO_GPU_ENV, value)
        assert gpu.zero_gpu()
    monkeypatch.setenv(gpu.ZERO_GPU_ENV, "false")
    assert not gpu.zero_gpu()


def test_on_zero_gpu_the_apps_model_work_runs_in_the_worker_and_matches_a_plain_run(
    fake_zero_gpu: object, demo: object, tmp_path: Path
) -> None:
    """The calls the app's session makes (its analysis, a method's map with a progress callback, the
    deletion/insertion curves) in the worker: the same results as in this process, on the CPU."""
    image = read_image(str(shapes_file(tmp_path, 7)))
    with pytest.raises(ValueError, match="load it before launch and share it"):
        gpu.on_gpu(session._analyse, demo, image)
    assert fake_zero_gpu.CALLS == []
    gpu.share(demo)
    plain = session._analyse(demo, image)
    analysis = gpu.on_gpu(session._analyse, demo, image)
    assert fake_zero_gpu.CALLS == [("_run_in_worker", gpu.GPU_SECONDS)]
    assert analysis.pixels.device.type == "cpu" and analysis.ptame_maps.device.type == "cpu"
    # The worker computes with one thread (as the stand-in sets it): equal up to the sums' rounding.
    assert torch.equal(analysis.pixels, plain.pixels) and torch.allclose(
        analysis.ptame_maps, plain.ptame_maps, atol=1e-4
    )
    assert np.allclose(analysis.probabilities, plain.probabilities, atol=1e-6)
    assert analysis.cam_channels == plain.cam_channels

    reports: list[tuple[int, int]] = []
    top = analysis.top(1)[0]
    for method in ("gradcam", "scorecam"):
        done = gpu.on_gpu(session._run, get_method(method), demo, analysis, top, lambda *done: reports.append(done))
        again = session._run(get_method(method), demo, plain, top, None)
        assert done.method == method and np.allclose(done.saliency, again.saliency, atol=1e-4), method
    assert reports == []  # a callback defined in a function stays in the app: the worker gets None

    maps = torch.from_numpy(again.saliency).unsqueeze(0)
    curves = gpu.on_gpu(deletion_insertion, demo.backbone, analysis.pixels, maps, torch.tensor([top]), steps=4)
    want = deletion_insertion(demo.backbone, plain.pixels, maps, torch.tensor([top]), steps=4)
    assert curves.deletion.device.type == "cpu" and torch.allclose(curves.deletion, want.deletion, atol=1e-5)
    assert len(fake_zero_gpu.CALLS) == 4


def test_what_the_worker_changes_stays_in_the_worker(fake_zero_gpu: object) -> None:
    box: list[int] = []
    assert gpu.on_gpu(list.append, box, 1) is None and box == []  # ZeroGPU's semantics: caches live in the app


def nones(*callbacks: object, progress: object = "unset") -> list[bool]:
    """In the worker: which of the callbacks (positional, then ``progress``) arrived as None."""
    return [callback is None for callback in (*callbacks, progress)]


MODULE_LAMBDA = lambda done, total: None  # noqa: E731 (a lambda pickle cannot find by its name "<lambda>")


def test_on_zero_gpu_a_callback_that_cannot_be_pickled_by_name_arrives_as_none(fake_zero_gpu: object) -> None:
    """Not only lambdas: the session's real progress callbacks are functions defined inside functions (the
    lanes' ``report``, a closure over the lanes and their locks), and a module-level lambda has no name pickle can
    find. Each arrives as None, positional or keyword; a module-level function is pickled by name and arrives."""

    def report(done: int, total: int) -> None:
        del done, total

    lanes_report = Lanes(lane_threads=1, cores=2).borrowing_idle_cores(report)
    assert lanes_report is not report and "<locals>" in lanes_report.__qualname__
    got = gpu.on_gpu(nones, report, lanes_report, MODULE_LAMBDA, lambda done, total: None, progress=report)
    assert got == [True, True, True, True, True]
    assert gpu.on_gpu(nones, nones, progress=lanes_report) == [False, True]


def test_load_before_launch_loads_and_shares_every_model_and_names_the_failures(tmp_path: Path) -> None:
    good = ModelEntry.from_folder(TRAINED_DEMO)
    bad = ModelEntry(key="missing", display_name="Missing", classifier=f"local-dir:{tmp_path / 'nothing'}")
    registry = ModelRegistry([good, bad])
    try:
        assert gpu.load_before_launch(registry) == ["missing"]
        model = registry.get(good.key)
        for part in (model, model.backbone, model.backbone.model, model.explainer):
            assert id(part) in gpu._shared
    finally:
        gpu._shared.clear()


def test_on_zero_gpu_a_model_without_its_explainer_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry's background explainer retry would swap in a model the forked GPU worker does not
    hold (and load off the main thread): after load_before_launch, however long ago, no retry starts."""
    import dataclasses

    from ptame.serving import models

    entry = dataclasses.replace(ModelEntry.from_folder(TRAINED_DEMO), explainer=str(tmp_path / "no-explainer"))
    registry = ModelRegistry([entry], explainer_retry_s=0.0)
    try:
        gpu.load_before_launch(registry)
        model = registry.get(entry.key)
        assert model.explainer is None and id(model) in gpu._shared
        monkeypatch.setattr(models.time, "monotonic", lambda: 1e12)  # ages after the last attempt
        assert registry.get(entry.key) is model and registry.load(entry.key) is model
        assert not registry.explainers_pending()
        assert not [t for t in threading.enumerate() if t.name.startswith("ptame-explainer-retry")]
    finally:
        gpu._shared.clear()


def test_serving_device_is_cuda_on_zero_gpu_where_spaces_emulates_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gpu.ZERO_GPU_ENV, "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as spaces patches it on ZeroGPU
    assert gpu.serving_device("cpu") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.serving_device("cpu") == "cpu"


def start_app(environment: dict[str, str], port: int) -> subprocess.Popen:
    """``python app.py`` offline on ``port``; returns once it answers."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py")],
        cwd=ROOT,
        env={**os.environ, **environment, "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    start = time.perf_counter()
    while time.perf_counter() - start < 180:
        assert process.poll() is None, process.stderr.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("app.py did not answer within 180 s")


def explain_through_the_app(environment: dict[str, str], image: Path) -> list[object]:
    """Start the app with ``environment``, explain ``image`` with P-TAME, Grad-CAM and Score-CAM, stop it."""
    from gradio_client import Client, handle_file

    port = free_port()
    process = start_app(environment, port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        return list(
            client.predict(handle_file(str(image)), "shapes", ["ptame", "gradcam", "scorecam"], api_name="/explain")
        )
    finally:
        process.kill()
        process.wait(timeout=30)


@pytest.mark.slow
def test_the_app_starts_and_explains_with_spaces_installed(tmp_path: Path) -> None:
    """Hugging Face's ``spaces`` (requirements.txt) installed, off ZeroGPU: the app starts and explains offline."""
    import spaces  # noqa: F401  (installed, as on a Space)

    result = explain_through_the_app({}, shapes_file(tmp_path, 11))
    assert result and result[0]  # the predictions


@pytest.mark.slow
def test_on_simulated_zero_gpu_the_app_explains_in_gpu_workers(tmp_path: Path) -> None:
    """The app under the stand-in ``spaces`` with SPACES_ZERO_GPU=true: every explanation's model work runs in
    forked workers (the log counts them), and the app still answers."""
    log = tmp_path / "calls.log"
    environment = {
        "PYTHONPATH": os.pathsep.join([str(write_fake_spaces(tmp_path / "fake")), str(ROOT)]),
        gpu.ZERO_GPU_ENV: "true",
        "FAKE_SPACES_LOG": str(log),
    }
    result = explain_through_the_app(environment, shapes_file(tmp_path, 12))
    assert result and result[0]
    calls = log.read_text().splitlines() if log.exists() else []
    assert len(calls) >= 3 and set(calls) == {f"_run_in_worker {gpu.GPU_SECONDS}"}  # analysis, Grad-CAM, Score-CAM
