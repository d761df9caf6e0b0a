"""The app stops as containers and Spaces stop it (SIGTERM) or as a person does (Ctrl-C, SIGINT):
its temporary folders (cached examples, downloads) are removed as on a normal exit."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ptame.bench.app import free_port
from tests.conftest import ROOT

START_LIMIT_S = 180.0


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_app_leaves_no_temporary_folder(tmp_path: Path, stop: signal.Signals) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    port = free_port()
    environment = {**os.environ, "TMPDIR": str(temporary), "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_PORT": str(port)}
    environment.pop("GRADIO_EXAMPLES_CACHE", None)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py")],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < START_LIMIT_S:
            assert process.poll() is None, process.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        made = sorted(path.name.split("-")[1] for path in temporary.glob("ptame-*"))
        assert made == ["downloads", "examples"]
        process.send_signal(stop)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + stop, process.stderr.read()
    assert not list(temporary.glob("ptame-*"))
