"""Text for people: durations, unique class names, and the caption of a method's map."""

import math

from ptame.methods import get_method


def format_seconds(seconds: float) -> str:
    """A duration for captions: "12 ms", "1.4 s", "2 min 5 s"."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 1.0:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 60.0:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def display_class_names(class_names: list[str]) -> list[str]:
    """Class names made unique for display: a repeated name gets its index ("crane (134)")."""
    counts: dict[str, int] = {}
    for name in class_names:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name} ({index})" for index, name in enumerate(class_names)]


def method_caption(method: str, seconds: float) -> str:
    """ "P-TAME · 12 ms": a method's display name and its compute time."""
    return f"{get_method(method).name} · {format_seconds(seconds)}"
