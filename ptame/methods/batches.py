"""The perturbation methods' shared steps: perturbed inputs scored in batches, with progress.

Ablation-CAM scores one ablated copy per channel, Score-CAM one masked input per distinct channel
mask and RISE one masked input per mask, each ``batch_size`` inputs per forward pass, and each
reports ``progress(done, total)``: first with done = 0, then after every forward pass.
"""

from collections.abc import Callable

import torch


def check_batch_size(batch_size: int) -> None:
    """Raise ValueError unless ``batch_size`` (perturbed inputs per forward pass) is >= 1."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


class Progress:
    """Counts the perturbed inputs scored so far and reports them as ``report(done, total)``.

    Reports done = 0 when made, then once per ``advance``; ``report`` None reports nothing.
    """

    def __init__(self, total: int, report: Callable[[int, int], None] | None) -> None:
        self.total = total
        self.done = 0
        self.report = report
        self._send()

    def advance(self, count: int) -> None:
        """``count`` more inputs are scored (one forward pass)."""
        self.done += count
        self._send()

    def _send(self) -> None:
        if self.report is not None:
            self.report(self.done, self.total)


def scores_in_batches(
    count: int,
    batch_size: int,
    score: Callable[[int, int], torch.Tensor],
    progress: Progress,
    device: torch.device,
) -> torch.Tensor:
    """The scores of ``count`` perturbed inputs of one image, ``batch_size`` per forward pass.

    Args:
        count: the inputs to score.
        batch_size: inputs per forward pass (>= 1).
        score: ``score(start, stop)`` runs one forward pass and gives the (stop - start,) scores of
            inputs ``start`` .. ``stop - 1``.
        progress: advanced after every forward pass.
        device: where the scores are kept (the model's: no host synchronisation per batch).

    Returns:
        (count,) float32 scores, in input order.
    """
    scores = torch.empty(count, device=device)
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        scores[start:stop] = score(start, stop)
        progress.advance(stop - start)
    return scores
