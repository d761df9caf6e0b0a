"""Training recipes: the paper's hyper-parameters per classifier, and the default for any other.

A recipe is data. The three paper recipes are Table "Recipe of the paper" of
``shared/docs/ptame-method.md`` (Ntrougkas, Mezaris, Patras, IEEE OJSP 2025, arXiv 2501.17813):
one epoch of ImageNet train, global batch 32, AdamW with amsgrad, OneCycle stepped per batch
with max_lr = lr, bf16 autocast, seed 12345, train transform Resize 256 / RandomCrop 224 /
horizontal flip, ResNet-18 (torchvision IMAGENET1K_V1) auxiliary network, layers 1-4, the
head's own initialisation.

Every other classifier gets ``DEFAULT_RECIPE``: the optimisation settings of
``ptame.training.TrainSettings()`` (what the Python API uses without settings), at least
``DEFAULT_MIN_STEPS`` steps, and the classifier's own input size.
"""

import dataclasses
from dataclasses import dataclass

from ptame.loading.backbones import PAPER_BACKBONES
from ptame.loss import LossWeights
from ptame.training import TrainSettings

PAPER = "Ntrougkas, Mezaris, Patras: P-TAME, IEEE OJSP 2025 (arXiv 2501.17813)"


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a training run, besides the data.

    lr: OneCycle's max_lr. weight_decay: AdamW's. loss: the loss coefficients.
    zero_fuser_start: start the fuser at zero (``TrainSettings.zero_fuser_start``).
    batch_size: the global batch (split across processes). epochs: passes over the data.
    min_steps: at least this many steps (more passes over a small folder).
    resize, crop: train transform (shorter side resized to ``resize``, random ``crop`` square,
    horizontal flip); None: the classifier's own evaluation resize / crop.
    seed: data order, augmentation and head initialisation. amp: bf16 autocast on CUDA.
    auxiliary, feature_levels: the auxiliary network (a timm name) and its feature levels.
    auxiliary_size: the shorter side the auxiliary network sees (``PTAME``'s auxiliary_size);
    None: the classifier's input size.
    classifier_weights: the exact classifier weights the explainer is trained for (model card).
    source: where the values come from.
    """

    lr: float = TrainSettings.lr
    weight_decay: float = TrainSettings.weight_decay
    loss: LossWeights = TrainSettings.loss
    zero_fuser_start: bool = TrainSettings.zero_fuser_start
    batch_size: int = 32
    epochs: int = 1
    min_steps: int = 0
    resize: int | None = None
    crop: int | None = None
    seed: int = 12345
    amp: bool = True
    auxiliary: str = "resnet18.tv_in1k"
    feature_levels: tuple[int, ...] = (1, 2, 3, 4)
    auxiliary_size: int | None = None
    classifier_weights: str = "the timm model's default pretrained weights"
    source: str = "ptame's default recipe for a new domain (README, How the default recipe was chosen)"

    def settings(self, *, compile: bool = False, log_every: int = 10, channels_last: bool = True) -> TrainSettings:
        """The optimisation settings of ``ptame.training`` for this recipe."""
        return TrainSettings(
            lr=self.lr,
            weight_decay=self.weight_decay,
            loss=self.loss,
            zero_fuser_start=self.zero_fuser_start,
            amp=self.amp,
            compile=compile,
            log_every=log_every,
            channels_last=channels_last,
        )

    def as_dict(self) -> dict[str, object]:
        """The recipe as plain JSON-ready values."""
        values = dataclasses.asdict(self)
        values["feature_levels"] = list(self.feature_levels)
        return values

    def total_steps(self, num_images: int) -> int:
        """Optimiser steps for a folder of ``num_images`` training images: ``epochs`` passes of
        whole global batches, and at least ``min_steps``."""
        return max(self.min_steps, self.epochs * (num_images // self.batch_size))


# The recipe values that ``python -m train imagenet`` sets with one flag each (``--weight-decay``
# for ``weight_decay``), and that train/cards.py writes back into a run's command line: every
# loss coefficient, and every recipe field but loss (its coefficients are flags of their own),
# feature_levels (a list, handled on its own) and classifier_weights and source (descriptions).
LOSS_FLAGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(LossWeights))
RECIPE_FLAGS: tuple[str, ...] = tuple(
    f.name
    for f in dataclasses.fields(Recipe)
    if f.name not in {"loss", "feature_levels", "classifier_weights", "source"}
)


def command_flag(name: str, value: object) -> str:
    """A recipe value as its command-line words: ``--name value``; a boolean as ``--name`` or
    ``--no-name``, a list as its items; floats to 12 significant digits (``--ce 1``, ``--lr 0.0001``)."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if isinstance(value, list | tuple):
        return f"{flag} {' '.join(map(str, value))}"
    return f"{flag} {value:.12g}" if isinstance(value, float) else f"{flag} {value}"


# The paper's schedule and data pipeline, with the method's default loss coefficients: what
# ``python -m train imagenet`` uses for a classifier the paper did not train (its input size).
PAPER_SCHEDULE = Recipe(
    lr=1e-4,
    weight_decay=0.0,
    loss=LossWeights(),
    zero_fuser_start=False,
    source="the paper's schedule with the method's default loss coefficients",
)
_PAPER_BASE = dataclasses.replace(PAPER_SCHEDULE, resize=256, crop=224, source=PAPER)

# The paper's backbones (ptame.loading.backbones.PAPER_BACKBONES: their weight decay, loss and weights).
PAPER_RECIPES: dict[str, Recipe] = {
    name: dataclasses.replace(
        _PAPER_BASE, weight_decay=paper.weight_decay, loss=paper.loss, classifier_weights=paper.weights
    )
    for name, paper in PAPER_BACKBONES.items()
}

DEFAULT_MIN_STEPS = 800  # README, "How the default recipe was chosen"
DEFAULT_RECIPE = Recipe(min_steps=DEFAULT_MIN_STEPS)


def recipe_for(classifier: str, *, paper_schedule: bool = False) -> Recipe:
    """The recipe a classifier is trained with by default.

    Args:
        classifier: a ``create_backbone`` name.
        paper_schedule: for a classifier the paper did not train, ``PAPER_SCHEDULE`` (python
            -m train imagenet) instead of ``DEFAULT_RECIPE`` (python -m train explainer).

    Returns:
        The paper's recipe for "vgg16", "resnet50" and "vit_b_16"; otherwise ``PAPER_SCHEDULE``
        or ``DEFAULT_RECIPE``.
    """
    return PAPER_RECIPES.get(classifier, PAPER_SCHEDULE if paper_schedule else DEFAULT_RECIPE)
