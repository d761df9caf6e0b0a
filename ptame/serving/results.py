"""What the serving layer returns: an image's analysis, a method's map, curves, a stream's state."""

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Analysis:
    """What one pass over an image gives, for one model.

    Attributes:
        pixels: (1, 3, S, S) in [0, 1], the model's input (its preprocessing's centre crop).
        picture: (S, S, 3) uint8, the same image for display.
        probabilities: (K,) float, softmax of the classifier's logits.
        ptame_maps: (K, h, w) raw P-TAME maps of every class; None for a model without its explainer.
        predict_seconds: time of the classifier's forward pass.
        ptame_seconds: time of the explainer's pass (all K classes); 0.0 without explainer.
        cam_channels: channels of the classifier's CAM target layer (Score-CAM's passes).
    """

    pixels: torch.Tensor
    picture: np.ndarray
    probabilities: np.ndarray
    ptame_maps: torch.Tensor | None
    predict_seconds: float
    ptame_seconds: float
    cam_channels: int

    def top(self, count: int) -> list[int]:
        """The ``count`` most probable class indices, most probable first."""
        return [int(i) for i in np.argsort(-self.probabilities, kind="stable")[:count]]


@dataclass(frozen=True)
class Explanation:
    """One method's saliency map for one class.

    Attributes:
        method: a registered method's key (``ptame.methods``).
        class_index: the explained class.
        saliency: (S, S) float32 in [0, 1], on the model's input crop.
        seconds: compute time (P-TAME: its one pass, which mapped every class).
    """

    method: str
    class_index: int
    saliency: np.ndarray
    seconds: float

    @property
    def blank(self) -> bool:
        """Whether the map is constant (a CAM with no positive evidence at its layer: zero
        gradients, a saturated classifier, or a layer that does not see the class)."""
        return bool(np.ptp(self.saliency) == 0)


@dataclass(frozen=True)
class Curves:
    """Deletion and insertion curves of one map: class probability vs. fraction of pixels.

    ``fractions``, ``deletion``, ``insertion``: (steps + 1,) float; AUCs in [0, 1] (deletion:
    lower is better; insertion: higher is better).
    """

    method: str
    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    deletion_auc: float
    insertion_auc: float


@dataclass(frozen=True)
class StreamUpdate:
    """Where a multi-method explanation stands (``ExplainSession.explain_stream``).

    Attributes:
        analysis: the image's analysis for the model.
        class_index: the explained class.
        explanations: the maps done so far, by method key, in the order asked for once complete.
        pending: the methods still to compute, in the order they will be computed.
        expected_seconds: each pending method's expected compute time.
        unavailable: the methods asked for that cannot run on this model (they need its P-TAME
            explainer, which is not loaded), by key, each with the message saying why; they are
            neither pending nor in ``explanations``.
        class_name: the explained class's name, as the classifier names it.
        notes: plain text for people, no Markdown: why methods are unavailable, which maps are
            blank, and a warning when the image is not from the model's world.
    """

    analysis: Analysis
    class_index: int
    explanations: dict[str, Explanation]
    pending: list[str] = field(default_factory=list)
    expected_seconds: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    class_name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether every method that can run is done (nothing is pending)."""
        return not self.pending


@dataclass(frozen=True)
class GalleryItem:
    """One class of a gallery: its display name, probability and map."""

    class_index: int
    class_name: str
    probability: float
    explanation: Explanation


@dataclass(frozen=True)
class Gallery:
    """The explainer method's maps of an image's most probable classes, all from the analysis' one
    pass (``ExplainSession.gallery``).

    Attributes:
        method: the explainer method's key (``ptame.methods.explainer_method``).
        items: the classes, most probable first.
        seconds: time of the one pass that mapped every class.
        classes: how many classes that pass mapped (K).
        reference: the key of the baseline it is compared with (``ptame.methods.reference_method``).
        reference_seconds: the baseline's expected time for the same classes (one run per class).
    """

    method: str
    items: list[GalleryItem]
    seconds: float
    classes: int
    reference: str
    reference_seconds: float


@dataclass(frozen=True)
class CurvesTable:
    """Deletion and insertion curves of several methods' maps of one class
    (``ExplainSession.curves_table``).

    Attributes:
        class_index: the class.
        curves: by method key, in the order asked for, those that could be computed.
        unavailable: the methods asked for that cannot run on this model (they need its P-TAME
            explainer, which is not loaded), by key, each with the message saying why.
    """

    class_index: int
    curves: dict[str, Curves]
    unavailable: dict[str, str] = field(default_factory=dict)
