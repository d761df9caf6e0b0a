"""Shared fixtures: tiny offline models, saved checkpoints, a seeded Hugging Face cache."""

import shutil
from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf

from ptame import PTAME

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


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


@pytest.fixture(scope="session")
def auxiliary_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised ResNet-18 saved in timm's folder format."""
    torch.manual_seed(0)
    return save_timm_checkpoint(timm.create_model("resnet18", num_classes=10), tmp_path_factory.mktemp("auxiliary"))


@pytest.fixture
def explainer(auxiliary_folder: Path) -> PTAME:
    """A 10-class explainer on the saved ResNet-18, with a randomised head."""
    torch.manual_seed(1)
    model = PTAME(num_classes=10, auxiliary=f"local-dir:{auxiliary_folder}")
    for parameter in model.head.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    for level in model.head.levels:
        level.norm.running_mean.normal_()
        level.norm.running_var.uniform_(0.5, 2.0)
    return model.eval()
