"""The saliency methods, declared in one table that a decorator fills (as timm's model registry).

A method is a plain function ``(backbone, pixels, classes, **options) -> maps``: pixels
(B, 3, H, W) in [0, 1], classes (B,) int64, maps (B, H, W) in [0, 1] at the input's resolution.
``@register_method`` beside the function declares what the app, the command line, the evaluation
and the exports need to know of it: its key and display name, whether it is slow (streamed: it
takes a ``progress`` option, runs in the slow lane and is shown when done), its cost in forward
passes, and the options it is called with interactively. Nothing else lists the methods.

Adding a method is one new module in ``ptame/methods/`` with a decorated function, imported by
``ptame/methods/__init__.py`` (the import order is the display order).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

import torch

MapFunction = Callable[..., torch.Tensor]
Passes = Callable[[int, Mapping[str, object]], float]  # (CAM channels, options) -> forward passes per image
Function = TypeVar("Function", bound=MapFunction)


@dataclass(frozen=True)
class EvaluationOption:
    """A whole-number option a method is called with in an evaluation (``python -m train evaluate``),
    declared with the method: the evaluation gives it a flag and reports it.

    Attributes:
        keyword: the map function's keyword ("num_masks").
        flag: its command-line flag ("--rise-masks").
        paper: the P-TAME paper's value, the evaluation's default (8000).
        unit: what the value counts, as the report says it ("masks": "RISE with 8000 masks").
    """

    keyword: str
    flag: str
    paper: int
    unit: str


@dataclass(frozen=True)
class Method:
    """One saliency method and what is known of it.

    Attributes:
        key: its id in the command line, the API, file names and CSV rows ("gradcam").
        name: its display name ("Grad-CAM").
        compute: ``(backbone, pixels, classes, **options) -> (B, H, W)`` in [0, 1].
        passes: (the CAM target layer's channel count, the options) -> the classifier's forward
            (and backward) passes per image, for time estimates.
        streamed: slow (hundreds of passes): called with ``progress=(done, total) -> None``, run in
            the slow lane, shown when done.
        default: in the default selection of the app and the command line.
        options: keyword options of interactive use (the app, the command line).
        uses_explainer: reads the model's P-TAME explainer, through ``explainer=`` or, where the
            explainer's all-class pass is already made, ``all_class_maps=`` (B, K, h, w) raw maps.
        evaluation_options: options an evaluation calls it with (``EvaluationOption``).
        seeded: random; an evaluation calls it with its ``seed=``.
        evaluation_note: the evaluation report's line on its settings, formatted with its
            evaluation options ("{num_masks} masks, 7x7 grid, p = 0.5.").
        reference: the baseline that a trained explainer is measured against (the verdict of
            ``python -m train explainer``).
    """

    key: str
    name: str
    compute: MapFunction
    passes: Passes
    streamed: bool = False
    default: bool = False
    options: Mapping[str, object] = field(default_factory=dict)
    uses_explainer: bool = False
    evaluation_options: tuple[EvaluationOption, ...] = ()
    seeded: bool = False
    evaluation_note: str = ""
    reference: bool = False

    def __call__(
        self, backbone: object, pixels: torch.Tensor, classes: torch.Tensor, **options: object
    ) -> torch.Tensor:
        """The method's (B, H, W) maps in [0, 1] of ``classes`` (B,) for ``pixels`` (B, 3, H, W)."""
        return self.compute(backbone, pixels, classes, **options)

    def forward_passes(self, channels: int) -> float:
        """Forward passes per image with the interactive options, for a CAM layer of ``channels``."""
        return self.passes(channels, self.options)


_METHODS: dict[str, Method] = {}
METHODS: Mapping[str, Method] = MappingProxyType(_METHODS)  # key -> method, in display order


def register_method(
    key: str,
    name: str,
    *,
    passes: Passes,
    streamed: bool = False,
    default: bool = False,
    options: Mapping[str, object] | None = None,
    uses_explainer: bool = False,
    evaluation_options: tuple[EvaluationOption, ...] = (),
    seeded: bool = False,
    evaluation_note: str = "",
    reference: bool = False,
) -> Callable[[Function], Function]:
    """A decorator that registers a map function as a method (see ``Method``); returns it unchanged.

    Raises:
        ValueError: the key is taken or not of lowercase letters, digits, "+", "-" and "_".
    """
    if not key or not all(c.islower() or c.isdigit() or c in "+-_" for c in key):
        raise ValueError(f"a method key holds lowercase letters, digits, '+', '-' and '_'; got {key!r}")

    def register(function: Function) -> Function:
        if key in _METHODS:
            raise ValueError(f"a method {key!r} is registered already ({_METHODS[key].compute.__module__})")
        _METHODS[key] = Method(
            key,
            name,
            function,
            passes,
            streamed,
            default,
            dict(options or {}),
            uses_explainer,
            evaluation_options,
            seeded,
            evaluation_note,
            reference,
        )
        return function

    return register


def unregister_method(key: str) -> None:
    """Remove a registered method (a plug-in's, or a test's); unknown keys are ignored."""
    _METHODS.pop(key, None)


def get_method(key: str) -> Method:
    """The registered method of ``key``.

    Raises:
        ValueError: no such method (the message lists the known keys).
    """
    try:
        return _METHODS[key]
    except KeyError:
        raise ValueError(f"unknown method {key!r}; choose from {', '.join(_METHODS)}") from None


def method_keys() -> tuple[str, ...]:
    """Every registered key, in display order."""
    return tuple(_METHODS)


def default_method_keys() -> tuple[str, ...]:
    """The keys of the default selection, in display order."""
    return tuple(key for key, method in _METHODS.items() if method.default)


def explainer_method() -> Method:
    """The first registered method that reads a trained explainer (P-TAME)."""
    return next(method for method in _METHODS.values() if method.uses_explainer)


def reference_method() -> Method:
    """The registered baseline that a trained explainer is measured against (Grad-CAM)."""
    return next(method for method in _METHODS.values() if method.reference)
