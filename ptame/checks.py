"""Input checks shared by the saliency methods and the metrics: image batches, classes, maps."""

import torch

from ptame.maps import resize_maps


def check_inputs(pixels: torch.Tensor, classes: torch.Tensor | list[int]) -> torch.Tensor:
    """Validate a batch and its classes for a saliency method.

    Args:
        pixels: (B, 3, H, W) floating point, in [0, 1].
        classes: (B,) class indices (any integer tensor or sequence).

    Returns:
        classes as a (B,) int64 tensor on the device of ``pixels``.

    Raises:
        ValueError: wrong rank, channel count, dtype, or class count; a negative class.
    """
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[1] != 3:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"pixels must be a (B, 3, H, W) tensor, got {shape}")
    if not pixels.is_floating_point():
        raise ValueError(f"pixels must be floating point in [0, 1], got {pixels.dtype}")
    classes = torch.as_tensor(classes, device=pixels.device)
    if classes.is_floating_point() or classes.is_complex():
        raise ValueError(f"classes must be integers, got {classes.dtype}")
    classes = classes.long().reshape(-1)
    if classes.numel() != pixels.shape[0]:
        raise ValueError(f"{classes.numel()} classes for {pixels.shape[0]} images")
    if classes.numel() and int(classes.min()) < 0:
        raise ValueError(f"class indices must be >= 0, got {classes.tolist()}")
    return classes


def check_classes_fit(classes: torch.Tensor, num_classes: int) -> None:
    """Raise ValueError if a class index is >= ``num_classes`` (the classifier's output size)."""
    if classes.numel() and int(classes.max()) >= num_classes:
        raise ValueError(f"class index {int(classes.max())} is out of range: the classifier has {num_classes} classes")


def check_maps(pixels: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Validate saliency maps for a batch and bring them to its resolution.

    Args:
        pixels: (B, 3, H, W).
        maps: (B, h, w) in [0, 1].

    Returns:
        (B, H, W) float32 on the device of ``pixels``, resized bilinearly.

    Raises:
        ValueError: wrong rank or count, values outside [0, 1] or not finite.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3 or maps.shape[0] != pixels.shape[0]:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be (B, h, w) with B = {pixels.shape[0]}, got {shape}")
    maps = maps.to(device=pixels.device, dtype=torch.float32)
    if maps.numel() and not (torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1):
        raise ValueError("maps must hold finite values in [0, 1] (normalise them first, e.g. ptame.normalize_maps)")
    return resize_maps(maps, tuple(pixels.shape[-2:]))
