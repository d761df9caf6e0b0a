"""Training checkpoints: one safetensors file holding everything a run needs to go on.

Tensors: the head's weights (``head.*``), the optimiser's state (``optimizer.<param>.<name>``),
the random number generators' states (``rng.*``) and how many training images trained each
class so far (``target_counts``, ``ptame.training.train_explainer``'s). The safetensors metadata holds, as JSON,
the step, the optimiser's parameter groups, the schedule's state and the run's description.
Nothing is pickled. Files are written atomically (``ptame.loading.files.atomic_write_bytes``: a synced
temporary file renamed over the old one), so a run killed while writing leaves the previous
checkpoint intact.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ptame.errors import CheckpointError
from ptame.explainer import PTAME
from ptame.loading.files import atomic_write_bytes

FORMAT = "ptame-training-v1"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about its run: the steps done and the run's description, and
    (``load_checkpoint`` only) the (K,) int64 target counts of those steps."""

    step: int
    run: dict[str, object]
    target_counts: torch.Tensor | None = None


def save_checkpoint(
    path: Path,
    explainer: PTAME,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    run: dict[str, object],
    target_counts: torch.Tensor,
) -> None:
    """Write a training checkpoint atomically.

    Args:
        path: the file to write (``CHECKPOINT_NAME`` in the run's folder).
        explainer: the PTAME being trained (not a DistributedDataParallel wrapper).
        optimizer, scheduler: their states after ``step`` steps.
        step: optimiser steps done.
        run: JSON-ready description of the run (recipe, data, total steps), checked on resume.
        target_counts: (K,) int64, each class's training targets in those steps.
    """
    tensors = {f"head.{key}": value.detach().cpu().contiguous() for key, value in explainer.head.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {name} of parameter {index} is not a tensor: {value!r}")
            tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
    tensors["target_counts"] = target_counts.detach().cpu().to(torch.int64).contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    state = {
        "step": step,
        "run": run,
        "optimizer_param_groups": optimizer_state["param_groups"],
        "scheduler": scheduler.state_dict(),
    }
    atomic_write_bytes(path, save(tensors, metadata={"format": FORMAT, "state": json.dumps(state)}))


def _read_state(path: Path) -> dict[str, object]:
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupted?): {error}"
        ) from error
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a P-TAME training checkpoint (format {metadata.get('format')!r})")
    return json.loads(metadata["state"])


def read_checkpoint_info(path: Path) -> CheckpointInfo:
    """The step and run description of a checkpoint, without loading its tensors.

    Raises:
        CheckpointError: missing, unreadable, or not a training checkpoint.
    """
    state = _read_state(Path(path))
    return CheckpointInfo(step=int(state["step"]), run=state["run"])


def load_checkpoint(
    path: Path,
    explainer: PTAME,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> CheckpointInfo:
    """Restore the head, optimiser, schedule and random number generators from a checkpoint.

    The optimizer and scheduler must be built as for the original run (``make_optimizer``,
    ``make_scheduler`` with the same total steps) before their states are loaded.

    Returns:
        The checkpoint's step, run description and target counts.

    Raises:
        CheckpointError: unreadable file, or state that does not fit the explainer/optimiser
            (its target counts included: one per class).
    """
    state = _read_state(Path(path))
    tensors = load_file(str(path))
    head = {key.removeprefix("head."): value for key, value in tensors.items() if key.startswith("head.")}
    optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    groups = [
        {key: tuple(value) if key == "betas" else value for key, value in group.items()}
        for group in state["optimizer_param_groups"]
    ]
    try:
        explainer.head.load_state_dict(head, strict=True)
        optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path} does not fit this explainer or optimiser: {error}") from error
    target_counts = tensors.get("target_counts")
    if target_counts is None or target_counts.shape != (explainer.num_classes,) or target_counts.is_floating_point():
        raise CheckpointError(
            f"{path} has no count of training images for each of the {explainer.num_classes} classes (written by an "
            "older ptame?): start the run again without --resume"
        )
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return CheckpointInfo(step=int(state["step"]), run=state["run"], target_counts=target_counts)
