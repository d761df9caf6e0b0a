"""Pinned outputs of the committed shapes demo (checkpoints/shapes), against which tests/test_pinned.py
compares the code: any change to the head, the auxiliary network's loading, the preprocessing or the
checkpoint itself that moves a map shows up there.

After retraining checkpoints/shapes on purpose, write them again:

    python -m tests.pinned
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ptame.serving.loader import load_model
from ptame.serving.manifest import ModelEntry

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "shapes"
EXAMPLES = sorted((ROOT / "checkpoints" / "examples").glob("shapes-test-*.png"))
PINNED = Path(__file__).with_name("fixtures") / "shapes-pinned.npz"


def pinned_outputs() -> dict[str, np.ndarray]:
    """The committed demo on the six shapes example images.

    Returns:
        probabilities (6, K) float32: the classifier's softmax; raw_maps (6, K, h, w) float32: the
        explainer's raw maps of every class; maps (6, S, S) float32 in [0, 1]: the top-1 class's
        P-TAME map at the input size.
    """
    model = load_model(ModelEntry.from_folder(CHECKPOINT))
    transform = model.backbone.preprocessing.transform()
    pixels = torch.stack([transform(Image.open(path).convert("RGB")) for path in EXAMPLES])
    with torch.inference_mode():
        probabilities = model.backbone.logits(pixels).softmax(dim=1)
        raw_maps = model.explainer(pixels)
        maps = model.explainer.explain(pixels, probabilities.argmax(dim=1))
    return {
        "probabilities": probabilities.float().numpy(),
        "raw_maps": raw_maps.float().numpy(),
        "maps": maps.float().numpy(),
    }


if __name__ == "__main__":
    PINNED.parent.mkdir(exist_ok=True)
    np.savez_compressed(PINNED, **pinned_outputs())
    print(f"wrote {PINNED}")
