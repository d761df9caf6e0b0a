"""Messages fit for a visitor (issue 35, item 5): the app shows a short reason that says what is
wrong, with no path of the server's disk, no other library's advice and no clause said twice;
the log keeps the details."""

import logging
from pathlib import Path

import pytest
import torch

import app
from ptame.serving.captions import explainer_missing_message
from ptame.serving.manifest import ModelEntry
from ptame.serving.models import ModelRegistry
from ptame.serving.reasons import visitor_text
from tests.conftest import random_shapes_demo

FOREIGN_ADVICE = ("local_files_only", "trust_remote_code", "repo_type", "huggingface-cli", "hf auth", "HF_HUB_")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes demo's networks with random weights (classifier/, auxiliary/, explainer/)."""
    return random_shapes_demo(tmp_path_factory.mktemp("good") / "shapes")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("not cached (/opt/cache/torch/hub/checkpoints/deit_s-1a2b.pth)", "not cached (…/deit_s-1a2b.pth)"),
        ("the folder ~/models/owl/ has no config.json.", "the folder …/owl has no config.json."),
        ("'local-dir:/srv/zoo/owl' is not a Hub name", "'local-dir:…/owl' is not a Hub name"),
        ("checkpoint folder ../../etc does not exist", "checkpoint folder …/etc does not exist"),
        ("Hub repo owl-lab/owl-net at revision refs/pr/3 has no file a/b.json", None),
        ("see https://huggingface.co/owl-lab/owl-net and ViT-B/16 weights, 1 / 2", None),
    ],
)
def test_visitor_text_cuts_server_paths_to_their_last_part(text: str, shown: str | None) -> None:
    assert visitor_text(text) == (shown if shown is not None else text)


def visitor_page(registry: ModelRegistry) -> str:
    """Everything the app shows of the registry's models: the Models panel and the P-TAME notes."""
    for key in registry.entries:
        try:
            registry.load(key)
        except LookupError:
            pass
    notes = [explainer_missing_message(registry.get(key)) for key in registry.ready_keys()]
    return "\n".join([app.model_status(registry), *notes])


def assert_fit_for_a_visitor(page: str, server_paths: list[str]) -> None:
    for path in server_paths:
        assert path not in page, (path, page)
    for advice in FOREIGN_ADVICE:
        assert advice not in page, (advice, page)


def test_an_uncached_torchvision_classifier_is_unavailable_without_the_cache_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-home" / "hub"))
    registry = ModelRegistry([ModelEntry("vit", "ViT", "vit_b_16")])
    page = visitor_page(registry)
    assert_fit_for_a_visitor(page, [str(tmp_path), "hub/checkpoints"])
    assert "ViT-B/16 weights are not in torch's cache (…/vit_b_16-" in page, page


def test_an_uncached_hub_explainer_is_a_reason_in_ptames_words_and_the_log_keeps_the_hubs(
    good: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry([ModelEntry("owl", "Owl", f"local-dir:{good / 'classifier'}", "owl-lab/owl-explainer")])
    with caplog.at_level(logging.WARNING):
        page = visitor_page(registry)
    assert_fit_for_a_visitor(page, [str(good)])
    assert "config.json of Hub repo owl-lab/owl-explainer is not in the local Hugging Face cache" in page, page
    assert "unreachable" not in page, page  # said once, in the Hub's file's own reason
    for line in page.splitlines():
        assert line.count("the Hub cannot be reached") <= 1, line
    assert "caused by LocalEntryNotFoundError" in caplog.text and "local_files_only" in caplog.text


def test_a_damaged_explainer_folder_is_named_by_its_last_part_only(good: Path, tmp_path: Path) -> None:
    explainer = tmp_path / "zoo" / "owl-explainer"
    explainer.mkdir(parents=True)
    (explainer / "config.json").write_text("{not json")
    (explainer / "model.safetensors").write_bytes(b"")
    registry = ModelRegistry([ModelEntry("owl", "Owl", f"local-dir:{good / 'classifier'}", str(explainer))])
    page = visitor_page(registry)
    assert_fit_for_a_visitor(page, [str(tmp_path), str(good)])
    assert "…/config.json is not valid JSON" in page, page


def test_a_model_without_explainer_says_so_once(good: Path) -> None:
    registry = ModelRegistry([ModelEntry("owl", "Owl", f"local-dir:{good / 'classifier'}")])
    page = visitor_page(registry)
    assert_fit_for_a_visitor(page, [str(good)])
    assert page.count("no explainer is configured") == 2, page  # the Models panel, the P-TAME note
    for line in page.splitlines():
        assert line.count("P-TAME explainer") <= 1 and line.count("no explainer") <= 1, line
