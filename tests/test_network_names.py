"""Containment by one rule (issue 35, item 4): every network a name leads to goes through
``ptame.loading.network_names.locate_network``.

"hf-hub:" names a Hub repo ORG/NAME and nothing else: never a folder of the server's disk, whether
it is written as a path or as an ORG/NAME that happens to exist as a folder where the server runs.
A Hub explainer may reach its own repo's subfolders and other Hub repos, and its error messages
are the same whether a path it names exists on the server or not.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ptame import PTAME, CheckpointError, create_backbone
from ptame.serving.loader import load_model
from ptame.serving.manifest import ModelEntry
from tests.conftest import random_shapes_demo, seed_hf_cache

EXPLAINER_REPO = "lighthouse-lab/keeper-explainer"
NETWORK_REPO = "lighthouse-lab/beacon-net"  # also a folder of the working directory, in some tests


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes demo's networks with random weights (classifier/, auxiliary/, explainer/)."""
    return random_shapes_demo(tmp_path_factory.mktemp("good") / "shapes")


def name_auxiliary(explainer: Path, auxiliary: str) -> None:
    """Make an explainer folder name ``auxiliary`` in its config.json and its weights' metadata."""
    config = explainer / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "auxiliary": auxiliary}))
    weights = explainer / "model.safetensors"
    with safe_open(str(weights), "pt") as handle:
        metadata = handle.metadata()
    save_file(load_file(str(weights)), str(weights), metadata={**metadata, "auxiliary": auxiliary})


def hub_explainer(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auxiliary: str, network_in_cache: bool = False
) -> None:
    """EXPLAINER_REPO in a seeded Hugging Face cache (offline), naming ``auxiliary``; with
    ``network_in_cache``, the good auxiliary network as NETWORK_REPO in the same cache."""
    files = tmp_path / "repo"
    shutil.copytree(good / "explainer", files)
    name_auxiliary(files, auxiliary)
    cache = seed_hf_cache(tmp_path / "cache", EXPLAINER_REPO, files)
    if network_in_cache:
        seed_hf_cache(cache, NETWORK_REPO, good / "auxiliary")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))


def refusal(load: object) -> str:
    with pytest.raises(CheckpointError) as caught:
        load()
    return str(caught.value)


def test_hf_hub_with_a_path_is_refused_alike_whether_the_path_exists_or_not(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The absolute path of a valid timm network folder, and one of the same length that does not
    exist: the same refusal, through from_pretrained and the app's loader."""
    existing, missing = str(good / "auxiliary"), str(good / "auxiliarz")
    messages, problems = [], []
    for index, path in enumerate((existing, missing)):
        hub_explainer(good, tmp_path / str(index), monkeypatch, f"hf-hub:{path}")
        messages.append(refusal(lambda: PTAME.from_pretrained(EXPLAINER_REPO)).replace(path, "PATH"))
        entry = ModelEntry("keeper", "Keeper", f"local-dir:{good / 'classifier'}", EXPLAINER_REPO)
        problems.append(load_model(entry).explainer_problem.replace(f"…/{Path(path).name}", "…/NAME"))
    assert messages[0] == messages[1] and "is not a Hub name" in messages[0], messages
    assert problems[0] == problems[1] and "is not a Hub name" in problems[0], problems
    assert str(good) not in problems[0], problems[0]


@pytest.mark.parametrize(
    "name",
    ["hf-hub:~/models", "hf-hub:../auxiliary", "hf-hub:./auxiliary", "hf-hub:a/b/c", f"hf-hub:{NETWORK_REPO}@../../x"],
)
def test_hf_hub_with_anything_but_org_name_is_refused_by_its_form(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    hub_explainer(good, tmp_path, monkeypatch, name)
    assert "is not a Hub name" in refusal(lambda: PTAME.from_pretrained(EXPLAINER_REPO))


def test_hf_hub_names_the_hub_repo_even_where_a_folder_of_that_name_exists(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORG/NAME is a folder of the working directory holding a valid network: a Hub explainer and
    create_backbone still look for the Hub repo (offline: not cached), as for a name with no folder."""
    shutil.copytree(good / "auxiliary", tmp_path / "work" / NETWORK_REPO)
    monkeypatch.chdir(tmp_path / "work")
    hub_explainer(good, tmp_path, monkeypatch, f"hf-hub:{NETWORK_REPO}")
    message = refusal(lambda: PTAME.from_pretrained(EXPLAINER_REPO))
    assert f"Hub repo {NETWORK_REPO} is not in the local Hugging Face cache" in message, message
    shutil.copytree(good / "classifier", tmp_path / "work" / "lighthouse-lab" / "lamp-net")
    message = refusal(lambda: create_backbone("hf-hub:lighthouse-lab/lamp-net"))
    assert "Hub repo lighthouse-lab/lamp-net is not in the local Hugging Face cache" in message, message


def test_create_backbone_refuses_hf_hub_with_the_path_of_a_valid_folder(good: Path) -> None:
    message = refusal(lambda: create_backbone(f"hf-hub:{good / 'classifier'}"))
    assert "is not a Hub name" in message and "never a path" in message, message


def test_a_hub_explainer_loads_its_auxiliary_network_from_another_hub_repo(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule refuses paths, not the Hub: the same maps as the local explainer's."""
    hub_explainer(good, tmp_path, monkeypatch, f"hf-hub:{NETWORK_REPO}", network_in_cache=True)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = PTAME.from_pretrained(good / "explainer")(pixels)
        assert torch.equal(PTAME.from_pretrained(EXPLAINER_REPO)(pixels), want)
