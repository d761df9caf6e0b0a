import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from ptame import PTAME, CheckpointError
from tests.conftest import ROOT, seed_hf_cache


def add_to_config(folder: Path, **values: object) -> None:
    """Rewrite ``folder``'s config.json with ``values`` added (or replacing the same keys)."""
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


@pytest.fixture
def saved(explainer: PTAME, tmp_path: Path) -> Path:
    folder = tmp_path / "explainer"
    explainer.save_pretrained(folder)
    return folder


def test_save_writes_head_only_and_identity(explainer: PTAME, saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert set(load_file(saved / "model.safetensors")) == set(explainer.head.state_dict())
    config = json.loads((saved / "config.json").read_text())
    assert config["auxiliary"] == explainer.auxiliary_name
    assert config["num_classes"] == 10
    assert config["feature_levels"] == [1, 2, 3, 4]
    assert "auxiliary_root" not in config


def test_save_load_gives_identical_maps(explainer: PTAME, saved: Path) -> None:
    pixels = torch.rand(2, 3, 128, 128)
    loaded = PTAME.from_pretrained(saved)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(pixels), explainer(pixels))
        assert torch.equal(loaded.explain(pixels, [1, 2]), explainer.explain(pixels, [1, 2]))


def test_relative_local_auxiliary_is_taken_from_the_checkpoint_folder(
    explainer: PTAME, auxiliary_folder: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(auxiliary_folder, bundle / "auxiliary")
    relative = PTAME(num_classes=10, auxiliary="local-dir:../auxiliary", auxiliary_root=bundle / "explainer")
    relative.head.load_state_dict(explainer.head.state_dict())
    relative.save_pretrained(bundle / "explainer")
    moved = shutil.move(bundle, tmp_path / "elsewhere")
    loaded = PTAME.from_pretrained(Path(moved) / "explainer")
    pixels = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(pixels), explainer(pixels))


def test_custom_auxiliary_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = timm.create_model("resnet10t", features_only=True, out_indices=(1, 2, 3)).eval()

    class Custom(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = backbone

        def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
            return self.body(images)

    auxiliary = Custom()
    explainer = PTAME(num_classes=4, auxiliary=auxiliary).eval()
    assert explainer.head.channels == (64, 128, 256)
    explainer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auxiliary"].startswith("custom:")
    with pytest.raises(CheckpointError, match="custom auxiliary network"):
        PTAME.from_pretrained(tmp_path)
    loaded = PTAME.from_pretrained(tmp_path, auxiliary=auxiliary)
    pixels = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(pixels), explainer(pixels))


def test_loads_repo_id_from_seeded_cache_offline(explainer: PTAME, auxiliary_folder: Path, tmp_path: Path) -> None:
    """A Hub repo id, a pinned revision, the auxiliary network from the Hub too: all offline."""
    cache = tmp_path / "hf-cache"
    seed_hf_cache(cache, "timm/resnet18.tv_in1k", auxiliary_folder)
    hub_explainer = PTAME(num_classes=10, auxiliary="resnet18.tv_in1k", pretrained_auxiliary=False)
    hub_explainer.head.load_state_dict(explainer.head.state_dict())
    hub_explainer.save_pretrained(tmp_path / "repo")
    add_to_config(tmp_path / "repo", pretrained_auxiliary=True)
    seed_hf_cache(cache, "ptame/resnet50-explainer", tmp_path / "repo", revisions=("main", "v1"))
    pixels = torch.rand(1, 3, 64, 64)
    torch.save(pixels, tmp_path / "pixels.pt")
    with torch.no_grad():
        torch.save(explainer(pixels), tmp_path / "expected.pt")

    script = f"""
import torch
from ptame import PTAME
pixels = torch.load({str(tmp_path / "pixels.pt")!r})
expected = torch.load({str(tmp_path / "expected.pt")!r})
model = PTAME.from_pretrained("ptame/resnet50-explainer", revision="v1")
with torch.no_grad():
    assert torch.equal(model(pixels), expected), "maps differ"
print("loaded offline")
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "loaded offline" in result.stdout


def test_missing_repo_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        PTAME.from_pretrained("ptame/no-such-explainer", cache_dir=tmp_path)


def test_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        PTAME.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="has no config.json"):
        PTAME.from_pretrained(tmp_path)


def test_corrupted_config(saved: Path) -> None:
    (saved / "config.json").write_text('{"num_classes": 10, "auxil')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        PTAME.from_pretrained(saved)


def test_foreign_config(saved: Path) -> None:
    (saved / "config.json").write_text(json.dumps({"architecture": "resnet50", "num_classes": 10}))
    with pytest.raises(CheckpointError, match="unknown keys \\['architecture'\\]"):
        PTAME.from_pretrained(saved)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: b"\x00" * 8 + data[8:],  # corrupted header size
        lambda data: b"PK\x03\x04 not safetensors at all",  # a zip/pickle file under the name
        lambda data: b"",
    ],
    ids=["truncated", "bad-header", "foreign-format", "empty"],
)
def test_damaged_weights(saved: Path, damage) -> None:
    weights = saved / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        PTAME.from_pretrained(saved)


def test_non_finite_weights(saved: Path) -> None:
    tensors = load_file(saved / "model.safetensors")
    tensors["fuser.weight"][0, 0] = float("nan")
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="fuser.weight holds NaN"):
        PTAME.from_pretrained(saved)


def test_different_class_count(saved: Path) -> None:
    with pytest.raises(CheckpointError, match="num_classes = 10, but this explainer has num_classes = 20"):
        PTAME.from_pretrained(saved, num_classes=20)
    tensors = load_file(saved / "model.safetensors")
    save_file(tensors, saved / "model.safetensors")  # the same tensors, without identity metadata
    with pytest.raises(CheckpointError, match="fuser.weight has shape \\(10, 960, 1, 1\\).*\\(20, 960, 1, 1\\)"):
        PTAME.from_pretrained(saved, num_classes=20)


def test_different_auxiliary_network(saved: Path) -> None:
    with pytest.raises(CheckpointError, match="auxiliary = local-dir:.*but this explainer has auxiliary = resnet34"):
        PTAME.from_pretrained(saved, auxiliary="resnet34", pretrained_auxiliary=False)


def test_missing_and_unexpected_tensors(saved: Path) -> None:
    tensors = load_file(saved / "model.safetensors")
    tensors["extra.weight"] = tensors.pop("levels.0.conv.bias")
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(
        CheckpointError, match="missing tensors \\['levels.0.conv.bias'\\], unexpected tensors \\['extra.weight'\\]"
    ):
        PTAME.from_pretrained(saved)


def test_missing_tensors_alone_are_refused(saved: Path) -> None:
    tensors = load_file(saved / "model.safetensors")
    del tensors["levels.0.conv.bias"]
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensors \\['levels.0.conv.bias'\\]"):
        PTAME.from_pretrained(saved)


def test_a_config_that_is_not_an_object(saved: Path) -> None:
    (saved / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must hold a JSON object, not list"):
        PTAME.from_pretrained(saved)


def test_checkpoint_files_pass_the_hub_options_for_both_files(saved: Path, tmp_path: Path) -> None:
    """A repo seeded only in a custom cache and only at a tag: both files need cache_dir and revision."""
    from ptame.loading.checkpoint import checkpoint_files

    cache = seed_hf_cache(tmp_path / "hf-cache", "someone/explainer", saved, revisions=("v2",))
    config, weights = checkpoint_files("someone/explainer", cache_dir=cache, revision="v2", local_files_only=True)
    assert config.read_bytes() == (saved / "config.json").read_bytes()
    assert weights.read_bytes() == (saved / "model.safetensors").read_bytes()


def test_the_weights_metadata_names_the_format_and_the_identity(explainer: PTAME, saved: Path) -> None:
    """Readers identify a P-TAME head file by its safetensors metadata: format ptame-head-v1 and the identity."""
    from safetensors import safe_open

    with safe_open(str(saved / "model.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "ptame-head-v1"
    assert metadata["auxiliary"] == explainer.auxiliary_name
    assert metadata["num_classes"] == "10"


def test_head_weights_are_read_onto_the_cpu_by_default(explainer: PTAME, saved: Path) -> None:
    from ptame.loading.checkpoint import read_head_weights

    expected = explainer.head.state_dict()
    tensors = read_head_weights(saved / "model.safetensors", explainer.identity(), expected)
    assert set(tensors) == set(expected)
    for key, value in tensors.items():
        assert value.device.type == "cpu" and torch.equal(value, expected[key]), key


def test_from_pretrained_passes_its_hub_options_to_the_download(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Hub option reaches the download (a dropped revision would load another version)."""
    import ptame.explainer

    calls = []

    def recording(source: object, **options: object) -> tuple[Path, Path]:
        calls.append(options)
        raise CheckpointError("recorded")

    monkeypatch.setattr(ptame.explainer, "checkpoint_files", recording)
    with pytest.raises(CheckpointError, match="recorded"):
        PTAME.from_pretrained("someone/explainer")
    with pytest.raises(CheckpointError, match="recorded"):
        PTAME.from_pretrained(
            "someone/explainer",
            revision="v2",
            cache_dir="/cache",
            force_download=True,
            token="hf_x",
            local_files_only=True,
        )
    defaults = {"revision": None, "cache_dir": None, "force_download": False, "token": None, "local_files_only": False}
    assert calls == [
        defaults,
        {"revision": "v2", "cache_dir": "/cache", "force_download": True, "token": "hf_x", "local_files_only": True},
    ]


@pytest.mark.parametrize("key", ["auxiliary_root", "self"])
def test_a_config_cannot_set_where_the_auxiliary_network_is_looked_for(saved: Path, key: str) -> None:
    """auxiliary_root is the checkpoint's own folder, never a value from config.json."""
    add_to_config(saved, **{key: "/elsewhere"})
    with pytest.raises(CheckpointError, match=re.escape(f"has unknown keys ['{key}']")):
        PTAME.from_pretrained(saved)


def test_a_config_that_describes_no_valid_explainer_is_a_checkpoint_error(saved: Path) -> None:
    add_to_config(saved, class_names=["a", "b", "c"])
    message = f"{saved / 'config.json'}: class_names must be null or one name per class (10), got ['a', 'b', 'c']"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        PTAME.from_pretrained(saved)
