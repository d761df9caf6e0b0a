"""No code from a model's folder ever runs (issue 35, item 3).

Each folder here holds a transformers config.json that asks for code of its own and a module that
writes a marker file when it is imported. Loaded through ``create_backbone``, the app's loader
(``ModelRegistry``) and ``PTAME.from_pretrained`` (as an explainer's auxiliary network), with "y"
waiting on standard input, it must be refused with a ptame error that says why, within LIMIT_S;
the marker must never appear, and a SIGALRM that the process had set must still be pending, with
its own handler.
"""

import io
import json
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ptame import PTAME, CheckpointError, create_backbone
from ptame.errors import ModelUnavailable
from ptame.loading import hf_transformers
from ptame.serving.manifest import ModelEntry
from ptame.serving.models import ModelRegistry
from tests.conftest import random_shapes_demo

LIMIT_S = 20.0  # transformers' own prompt waits 15 s for an answer that never comes
ALARM_S = 3000  # the pending alarm of the "host process": far beyond the test
MODULE = "lantern_modeling"
CODE_MAP = {
    "AutoConfig": f"{MODULE}.LanternConfig",
    "AutoModelForImageClassification": f"{MODULE}.LanternForImageClassification",
}
# (id, config.json, pattern of the message): each asks for the folder's code in its own way.
CONFIGS = [
    (
        "unknown-type-with-auto-map",  # transformers would ask on stdin, then import the module
        {"model_type": "lantern-vision", "architectures": ["LanternForImageClassification"], "auto_map": CODE_MAP},
        "run Python code of its own",
    ),
    (
        "known-type-with-auto-map",
        {"model_type": "convnext", "num_labels": 3, "auto_map": CODE_MAP},
        "run Python code of its own",
    ),
    (
        "auto-map-in-a-sub-config",
        {"model_type": "convnext", "backbone_config": {"model_type": "lantern-vision", "auto_map": CODE_MAP}},
        "run Python code of its own",
    ),
    ("unknown-type", {"model_type": "lantern-vision", "num_labels": 3}, "model_type 'lantern-vision'"),
    ("architectures-only", {"architectures": ["LanternForImageClassification"]}, "model_type None"),
]


def code_folder(folder: Path, config: dict[str, object]) -> Path:
    """A transformers-looking folder whose module writes ``folder/../imported`` when imported."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    marker = folder.parent / "imported"
    (folder / f"{MODULE}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "from transformers import PretrainedConfig, PreTrainedModel\n"
        "class LanternConfig(PretrainedConfig):\n    model_type = 'lantern-vision'\n"
        "class LanternForImageClassification(PreTrainedModel):\n    config_class = LanternConfig\n"
    )
    save_file({"classifier.weight": torch.zeros(3, 4)}, str(folder / "model.safetensors"))
    return folder


def refused_with_host_intact(load: Callable[[], object], folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Load with "y" waiting on stdin and a SIGALRM pending; the error's message, once the marker,
    the alarm and its handler are checked."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    calls = []

    def handler(signum: int, frame: object) -> None:
        calls.append(signum)

    previous = signal.signal(signal.SIGALRM, handler)
    signal.alarm(ALARM_S)
    try:
        start = time.perf_counter()
        with pytest.raises((CheckpointError, ModelUnavailable)) as caught:
            load()
        seconds = time.perf_counter() - start
        handler_after = signal.getsignal(signal.SIGALRM)
        remaining = signal.alarm(0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not (folder.parent / "imported").exists(), "the folder's module was imported"
    assert handler_after is handler and 0 < remaining <= ALARM_S and not calls, (handler_after, remaining)
    assert seconds < LIMIT_S, seconds
    return str(caught.value)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes demo's networks with random weights (classifier/, auxiliary/, explainer/)."""
    return random_shapes_demo(tmp_path_factory.mktemp("good") / "shapes")


@pytest.mark.parametrize(("config", "pattern"), [case[1:] for case in CONFIGS], ids=[case[0] for case in CONFIGS])
def test_create_backbone_refuses_a_folder_asking_for_its_own_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, object], pattern: str
) -> None:
    folder = code_folder(tmp_path / "lantern", config)
    message = refused_with_host_intact(lambda: create_backbone(f"local-dir:{folder}"), folder, monkeypatch)
    assert pattern in message and "never runs code from a model's files" in message, message


@pytest.mark.parametrize(("config", "pattern"), [case[1:] for case in CONFIGS], ids=[case[0] for case in CONFIGS])
def test_the_apps_loader_refuses_a_folder_asking_for_its_own_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, object], pattern: str
) -> None:
    folder = code_folder(tmp_path / "lantern", config)
    registry = ModelRegistry([ModelEntry("lantern", "Lantern", f"local-dir:{folder}")])
    message = refused_with_host_intact(lambda: registry.load("lantern"), folder, monkeypatch)
    assert pattern in message and registry.statuses()[0].state == "unavailable", message


def test_an_explainer_naming_such_a_folder_as_its_auxiliary_network_is_refused(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = code_folder(tmp_path / "lantern", CONFIGS[0][1])
    explainer = tmp_path / "explainer"
    shutil.copytree(good / "explainer", explainer)
    config = json.loads((explainer / "config.json").read_text())
    (explainer / "config.json").write_text(json.dumps({**config, "auxiliary": f"local-dir:{folder}"}))
    message = refused_with_host_intact(lambda: PTAME.from_pretrained(explainer), folder, monkeypatch)
    assert "not a timm model" in message, message


def test_transformers_itself_is_never_asked_to_trust_a_folders_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second guard alone: with ptame's own refusal taken away, every transformers call still
    says trust_remote_code=False, so transformers refuses without asking."""
    monkeypatch.setattr(hf_transformers, "refuse_code", lambda config, what: None)
    folder = code_folder(tmp_path / "lantern", CONFIGS[0][1])
    message = refused_with_host_intact(lambda: create_backbone(f"local-dir:{folder}"), folder, monkeypatch)
    assert "cannot build the classifier" in message, message


@pytest.fixture
def real_transformers_folder(tmp_path: Path) -> Iterator[Path]:
    """A tiny ConvNeXt classifier saved by transformers, for the legitimate case."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ConvNextConfig(
        num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3, image_size=32
    )
    folder = tmp_path / "convnext"
    transformers.ConvNextForImageClassification(config).save_pretrained(folder)
    yield folder


def test_a_folder_of_a_model_type_transformers_ships_still_loads(real_transformers_folder: Path) -> None:
    backbone = create_backbone(f"local-dir:{real_transformers_folder}")
    weights = load_file(str(real_transformers_folder / "model.safetensors"))
    head = next(name for name in weights if name.endswith("classifier.weight"))
    assert len(backbone.class_names) == 3 and weights[head].shape[0] == 3
