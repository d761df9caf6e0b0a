"""Saliency methods behind one signature, declared in one registry (``ptame.methods.registry``).

Each module registers its method when imported; this import order is the display order. The map
functions are in their modules (``ptame.methods.grad_cam.grad_cam``) and in ``ptame``'s flat API.
"""

from ptame.methods import p_tame, grad_cam, grad_cam_plus_plus, score_cam, ablation_cam, rise  # noqa: F401, I001 (registers)
from ptame.methods.registry import (
    METHODS,
    EvaluationOption,
    Method,
    default_method_keys,
    explainer_method,
    get_method,
    method_keys,
    reference_method,
    register_method,
    unregister_method,
)

__all__ = [
    "METHODS",
    "EvaluationOption",
    "Method",
    "default_method_keys",
    "explainer_method",
    "get_method",
    "method_keys",
    "reference_method",
    "register_method",
    "unregister_method",
]
