from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ptame import PTAME, CheckpointError, TrainSettings
from ptame.training import make_optimizer, make_scheduler
from train.checkpointing import load_checkpoint, read_checkpoint_info, save_checkpoint

SETTINGS = TrainSettings(lr=1e-2, weight_decay=0.1)
COUNTS = torch.tensor([3, 0, 7, 1, 0])  # each of the 5 classes' training targets so far


def trained_state(seed: int) -> tuple[PTAME, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A tiny explainer after two optimiser steps on random gradients."""
    torch.manual_seed(seed)
    explainer = PTAME(num_classes=5, auxiliary="test_resnet", pretrained_auxiliary=False)
    optimizer = make_optimizer(explainer, SETTINGS)
    scheduler = make_scheduler(optimizer, SETTINGS, total_steps=10)
    for _ in range(2):
        for parameter in explainer.head.parameters():
            parameter.grad = torch.randn_like(parameter)
        optimizer.step()
        scheduler.step()
    return explainer, optimizer, scheduler


def test_a_checkpoint_restores_head_optimizer_schedule_and_rng(tmp_path: Path) -> None:
    explainer, optimizer, scheduler = trained_state(seed=0)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(
        path, explainer, optimizer, scheduler, step=2, run={"backbone": "x", "total_steps": 10}, target_counts=COUNTS
    )
    expected_draw = torch.rand(3)

    torch.manual_seed(1)
    restored = PTAME(num_classes=5, auxiliary="test_resnet", pretrained_auxiliary=False)
    restored_optimizer = make_optimizer(restored, SETTINGS)
    restored_scheduler = make_scheduler(restored_optimizer, SETTINGS, total_steps=10)
    info = load_checkpoint(path, restored, restored_optimizer, restored_scheduler)

    assert info.step == 2 and info.run == {"backbone": "x", "total_steps": 10}
    assert info.target_counts.dtype == torch.int64 and info.target_counts.tolist() == [3, 0, 7, 1, 0]
    assert torch.equal(torch.rand(3), expected_draw)
    for key, value in explainer.head.state_dict().items():
        assert torch.equal(restored.head.state_dict()[key], value)
    assert restored_scheduler.state_dict() == scheduler.state_dict()
    assert restored_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert restored_optimizer.param_groups[0]["betas"] == optimizer.param_groups[0]["betas"]
    for parameter, restored_parameter in zip(explainer.head.parameters(), restored.head.parameters()):
        for name, value in optimizer.state[parameter].items():
            assert torch.equal(restored_optimizer.state[restored_parameter][name], value), name
    # one more identical step on both: identical weights
    for model, opt in ((explainer, optimizer), (restored, restored_optimizer)):
        torch.manual_seed(5)
        for parameter in model.head.parameters():
            parameter.grad = torch.randn_like(parameter)
        opt.step()
    assert torch.equal(explainer.head.fuser.weight, restored.head.fuser.weight)


def test_unreadable_or_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    explainer, optimizer, scheduler = trained_state(seed=0)
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        read_checkpoint_info(tmp_path / "missing.safetensors")
    explainer.save_pretrained(tmp_path / "explainer")
    with pytest.raises(CheckpointError, match="not a P-TAME training checkpoint"):
        load_checkpoint(tmp_path / "explainer" / "model.safetensors", explainer, optimizer, scheduler)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, explainer, optimizer, scheduler, step=2, run={}, target_counts=COUNTS)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        read_checkpoint_info(path)


def test_a_checkpoint_without_target_counts_asks_for_a_new_run(tmp_path: Path) -> None:
    """A checkpoint of an older ptame (no ``target_counts``) cannot say which classes its steps trained."""
    explainer, optimizer, scheduler = trained_state(seed=0)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, explainer, optimizer, scheduler, step=2, run={}, target_counts=COUNTS)
    with safe_open(str(path), framework="pt") as file:
        metadata, tensors = file.metadata(), {key: file.get_tensor(key) for key in file.keys()}
    del tensors["target_counts"]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="no count of training images for each of the 5 classes"):
        load_checkpoint(path, explainer, optimizer, scheduler)


def test_a_checkpoint_of_another_explainer_does_not_load(tmp_path: Path) -> None:
    explainer, optimizer, scheduler = trained_state(seed=0)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, explainer, optimizer, scheduler, step=2, run={}, target_counts=COUNTS)
    other = PTAME(num_classes=7, auxiliary="test_resnet", pretrained_auxiliary=False)
    other_optimizer = make_optimizer(other, SETTINGS)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(path, other, other_optimizer, make_scheduler(other_optimizer, SETTINGS, 10))


def test_an_interrupted_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explainer, optimizer, scheduler = trained_state(seed=0)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, explainer, optimizer, scheduler, step=2, run={}, target_counts=COUNTS)
    assert oct(path.stat().st_mode & 0o777) == "0o644"

    def interrupted(source: str, destination: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, explainer, optimizer, scheduler, step=3, run={}, target_counts=COUNTS)
    assert read_checkpoint_info(path).step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]
