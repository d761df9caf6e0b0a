"""The files of a training run's folder (``python -m train explainer``), and the manifest entry
that points the app at a run."""

import json

from ptame.loading.backbones import PAPER_BACKBONES

CHECKPOINT_NAME = "checkpoint.safetensors"  # head, optimiser, schedule, step, RNG (train/checkpointing.py)
LOG_NAME = "log.jsonl"  # one record per logged interval
RUN_NAME = "run.json"  # the finished run's full configuration
EXPLAINER_FOLDER = "explainer"  # PTAME.save_pretrained of the finished run
MANIFEST_NAME = "manifest.toml"  # a one-entry manifest of the finished run (for python -m train evaluate)
EVALUATION_NAME = "evaluation.md"  # written by python -m train evaluate --out RUN
BACKBONE_DISPLAY_NAMES = {name: paper.display_name for name, paper in PAPER_BACKBONES.items()}


def manifest_entry(
    key: str,
    display_name: str,
    classifier: str,
    explainer: str,
    revision: str | None = None,
    target_layer: str | None = None,
) -> str:
    """A [[models]] table of a manifest (checkpoints/manifest.toml; ptame.serving.manifest.ModelEntry's fields).

    Args:
        key: the entry's key. display_name: its name in the app.
        classifier: a ``create_backbone`` name. explainer: a folder (relative to the manifest)
            or a Hub repo id. revision: the Hub commit to pin (None: a comment asks for one).
        target_layer: the classifier's CAM layer, if not its default.

    Returns:
        TOML text, without a trailing newline.
    """
    pin = f"explainer_revision = {json.dumps(revision)}" if revision else '# explainer_revision = "COMMIT"'
    return "\n".join(
        [
            "[[models]]",
            f"key = {json.dumps(key)}",
            f"display_name = {json.dumps(display_name)}",
            f"classifier = {json.dumps(classifier)}",
            f"explainer = {json.dumps(explainer)}",
            pin,
            *([f"target_layer = {json.dumps(target_layer)}"] if target_layer else []),
        ]
    )
