"""Methods from outside ptame (ptame.interop.plugins): a user's module named in $PTAME_METHOD_MODULES is
offered by the command line and the app beside the built-ins; captum's only where captum is installed;
a module that fails is one clear error."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptame.interop import plugins
from ptame.methods import METHODS, unregister_method
from tests.conftest import ROOT, TRAINED_DEMO, shapes_file

# A user's method: the map of the image's own brightness (a map no built-in computes).
USER_MODULE = '''
from ptame.methods import register_method


@register_method("brightness", "Brightness", passes=lambda channels, options: 0)
def brightness(backbone, pixels, classes):
    return pixels.mean(dim=1)
'''


def user_module(folder: Path, name: str = "my_methods") -> Path:
    (folder / f"{name}.py").write_text(USER_MODULE)
    return folder


def test_installed_extras_and_named_modules_are_the_method_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    found = {"captum": True}
    monkeypatch.setattr(plugins.importlib.util, "find_spec", lambda package: found.get(package, False))
    monkeypatch.setenv(plugins.METHOD_MODULES_ENV, " my_methods, other ,my_methods,")
    assert plugins.method_modules() == ["ptame.interop.captum", "my_methods", "other"]
    found["captum"] = False  # captum not installed: its adapter is not imported
    monkeypatch.delenv(plugins.METHOD_MODULES_ENV)
    assert plugins.method_modules() == []


def test_a_named_module_registers_its_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(user_module(tmp_path, "ptame_test_user_methods")))
    monkeypatch.setattr(plugins, "OPTIONAL_METHOD_MODULES", {})
    monkeypatch.setenv(plugins.METHOD_MODULES_ENV, "ptame_test_user_methods")
    try:
        assert plugins.register_method_modules() == ["ptame_test_user_methods"]
        assert METHODS["brightness"].name == "Brightness" and not METHODS["brightness"].default
    finally:
        unregister_method("brightness")
        sys.modules.pop("ptame_test_user_methods", None)


@pytest.mark.parametrize(
    ("source", "cause"),
    [(None, "ModuleNotFoundError"), ("def register():\n    raise RuntimeError('no GPU')\n", "RuntimeError: no GPU")],
)
def test_a_module_that_fails_is_one_clear_error(
    source: str | None, cause: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source is not None:
        (tmp_path / "ptame_test_broken.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "OPTIONAL_METHOD_MODULES", {})
    monkeypatch.setenv(plugins.METHOD_MODULES_ENV, "ptame_test_broken")
    with pytest.raises(plugins.MethodModuleError) as caught:
        plugins.register_method_modules()
    sys.modules.pop("ptame_test_broken", None)
    assert "'ptame_test_broken'" in str(caught.value) and "PTAME_METHOD_MODULES" in str(caught.value)
    assert cause in str(caught.value)


def test_the_command_line_draws_a_users_method_beside_the_built_ins(tmp_path: Path) -> None:
    image = shapes_file(tmp_path, 3)
    (tmp_path / "user").mkdir()
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(user_module(tmp_path / "user")),
        plugins.METHOD_MODULES_ENV: "my_methods",
    }
    command = [sys.executable, "-m", "ptame", "explain", str(image), "--model", str(TRAINED_DEMO)]
    options = ["--methods", "gradcam,brightness", "--out", str(tmp_path / "out")]
    done = subprocess.run([*command, *options], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "out" / "shapes-3.npz") as saved:
        assert saved["brightness"].shape == saved["gradcam"].shape and np.ptp(saved["brightness"]) > 0
    environment[plugins.METHOD_MODULES_ENV] = "no_such_module"
    failed = subprocess.run(
        [*command, *options], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert failed.returncode == 2 and "'no_such_module'" in failed.stderr and "Traceback" not in failed.stderr
