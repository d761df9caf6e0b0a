"""A checkpoint whose head weights are not all finite is refused, not loaded: +inf and -inf as well
as NaN (tests/test_checkpoint.py covers NaN), and a float64 value that becomes infinite once the
float32 head holds it."""

import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ptame import PTAME, CheckpointError

DAMAGED = "fuser.weight"  # a float tensor of the head


@pytest.fixture
def saved(explainer: PTAME, tmp_path: Path) -> Path:
    folder = tmp_path / "explainer"
    explainer.save_pretrained(folder)
    return folder


def rewrite_weights(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Overwrite folder/model.safetensors with ``tensors``, keeping the file's metadata (the
    explainer's identity), so that only the values differ from a valid checkpoint."""
    path = folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata and metadata.get("format") == "ptame-head-v1"  # the identity is kept, not dropped
    save_file(tensors, str(path), metadata=metadata)
    return path


def refusal(folder: Path, path: Path) -> str:
    """The message of the CheckpointError that loading ``folder`` raises; it names the file and the tensor."""
    with pytest.raises(CheckpointError) as caught:
        PTAME.from_pretrained(folder)
    message = str(caught.value)
    assert str(path) in message and DAMAGED in message, message
    return message


def test_the_unchanged_weights_with_their_metadata_still_load(saved: Path) -> None:
    """The rewrite alone (same tensors, same metadata) gives a loadable checkpoint: the refusals
    below are for the values, not for the rewrite."""
    rewrite_weights(saved, load_file(saved / "model.safetensors"))
    PTAME.from_pretrained(saved)


@pytest.mark.parametrize("value", [float("inf"), float("-inf")], ids=["plus-inf", "minus-inf"])
def test_infinite_weights_are_refused(saved: Path, value: float) -> None:
    tensors = load_file(saved / "model.safetensors")
    assert tensors[DAMAGED].dtype == torch.float32
    tensors[DAMAGED][3, 7] = value
    path = rewrite_weights(saved, tensors)
    message = refusal(saved, path)
    assert re.search("finite", message, re.IGNORECASE), message  # "non-finite", "infinite", "not finite"


def test_a_float64_weight_too_large_for_float32_is_refused(saved: Path) -> None:
    """1e300 is finite in float64 but +inf once copied into the float32 head: loading it would
    give a head with an infinite weight (a finiteness check in the file's dtype lets it through)."""
    tensors = load_file(saved / "model.safetensors")
    wide = tensors[DAMAGED].to(torch.float64)
    wide[3, 7] = 1e300
    assert torch.isfinite(wide).all() and not torch.isfinite(wide.to(torch.float32)).all()
    tensors[DAMAGED] = wide
    path = rewrite_weights(saved, tensors)
    refusal(saved, path)  # the message may say "infinite in float32" or "must be float32": not checked
