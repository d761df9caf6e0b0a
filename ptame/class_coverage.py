"""Which classes a P-TAME explainer was trained on, and its class-agnostic map for the others.

P-TAME learns one fuser row per class, and a row learns only from the training images whose
prediction (on the augmented image the loss sees) is that class: the row of a class that was never
a training target stays at its start (zero, with the default recipe), and its map is constant. An
explainer trained on a few hundred classes of an ImageNet classifier (the objects world) knows the
others not at all. So training counts its targets (``ptame.training.train_explainer``'s
``target_counts``) and ``python -m train explainer`` records them with the explainer
(``record_trained_images``): config.json's ``trained_images`` (K counts), and every untrained
class's row set to the mean of the trained rows. That row gives a class-agnostic map: where the
explainer finds the evidence of the classes it knows, on average. The app and ``ptame explain``
say so in words whenever they show one (``class_coverage_note``), so a user never mistakes it
for that class's explanation; they also say when a class had few training images.
"""

import torch

from ptame.explainer import PTAME


def record_trained_images(explainer: PTAME, counts: torch.Tensor) -> int:
    """Record how many training images trained each class, and give the untrained classes the class-agnostic row.

    Args:
        explainer: the trained explainer; its fuser rows of the classes with 0 images are set to
            the mean of the other rows (in place).
        counts: (K,) non-negative integers, the training images that trained each class (its targets).

    Returns:
        The number of classes that got the class-agnostic row.

    Raises:
        ValueError: ``counts`` is not K non-negative integers, or no class has an image.
    """
    counts = torch.as_tensor(counts)
    if counts.shape != (explainer.num_classes,) or counts.is_floating_point() or (counts < 0).any():
        raise ValueError(f"counts must be {explainer.num_classes} non-negative integers, got {tuple(counts.shape)}")
    trained = counts > 0
    if not trained.any():
        raise ValueError("no class has a training image: there is nothing to explain with")
    with torch.no_grad():
        weight = explainer.head.fuser.weight  # (K, C, 1, 1)
        weight[~trained] = weight[trained].mean(dim=0)
    explainer.set_trained_images([int(count) for count in counts])
    return int((~trained).sum())


# Fewer training images than this and a class's map is called rarely trained: on the objects world's
# held-out composites, the maps of such classes pointed at their object far less often than the
# others' (docs/objects-world.md, Classes it never or rarely trained on).
FEW_TRAINING_IMAGES = 100


def class_coverage_note(explainer: PTAME, class_index: int, class_name: str) -> str | None:
    """A sentence for a user shown P-TAME's map of a class it never or rarely trained on.

    Args:
        explainer: the explainer whose map is shown.
        class_index: the class of the map, in [0, K).
        class_name: its display name.

    Returns:
        For a class with no training image: that the map is the class-agnostic one. For one with
        fewer than ``FEW_TRAINING_IMAGES``: how many it had, and that its map is less reliable.
        None for the others, and when the explainer does not say (one trained before the counts
        were recorded).
    """
    counts = explainer.trained_images
    count = None if counts is None else counts[class_index]
    if count is None or count >= FEW_TRAINING_IMAGES:
        return None
    if count > 0:
        images = "image" if count == 1 else "images"
        return (
            f"P-TAME trained on only {count} {images} of {class_name!r} (fewer than {FEW_TRAINING_IMAGES}): "
            "the maps of classes it saw this rarely are less reliable than those of the classes it saw often "
            "(they point at their object less often); Grad-CAM and the other baselines do not depend on training."
        )
    known = sum(trained > 0 for trained in counts)
    return (
        f"P-TAME was never trained on {class_name!r}: this explainer saw the classifier predict only {known} of its "
        f"{len(counts)} classes in training. The P-TAME map shown for it is the class-agnostic one (the mean of the "
        f"{known} trained classes' maps: where their evidence is), not an explanation of {class_name!r}; Grad-CAM "
        "and the other baselines explain any class."
    )
