"""Where Grad-CAM-style methods read a classifier, and how that layer's output becomes a map.

A declared table names the layer for the families ptame knows (timm's and Hugging Face
transformers' CNNs, ViT, DeiT, BEiT, Swin, ConvNeXt, EfficientNet, MobileNet, RegNet); any other
model is probed: one forward and backward pass of a seeded image, and the last layer whose output
is a spatial map (channels first or last) or a token grid, and whose gradient for the top class is
not zero (a ViT's final norm feeds the class token only: its patch tokens get no gradient), with a
LayerNorm preferred for tokens (a transformer's last block's first norm). ``target_layer=NAME``
(a dotted module path; negative indices count from the end) overrides both.

The chosen layer's output layout is read from its output on the probe image, never assumed:
(B, C, h, w) is used as it is, (B, h, w, C) is permuted, (B, prefix + h * w, C) tokens are
reshaped to their grid, and a shape that fits none or several is an error naming the layer.
"""

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

MAX_PREFIX_TOKENS = 8  # class, distillation and register tokens
MIN_GRID = 2  # a 1 x 1 "map" (after global pooling) explains nothing

# Family (the model's class name) -> its target layer, a dotted path relative to the model; a tuple
# lists the paths of several library versions, the first that exists is taken.
DECLARED_LAYERS: dict[str, str | tuple[str, ...]] = {
    # timm
    "ResNet": "layer4",
    "ConvNeXt": "stages.-1",
    "EfficientNet": "bn2",  # after conv_head, its BatchNorm and activation
    "MobileNetV3": "blocks",  # the last spatial layer: timm's conv_head follows the global pool
    "RegNet": "final_conv",
    "VisionTransformer": "blocks.-1.norm1",
    "VisionTransformerDistilled": "blocks.-1.norm1",
    "Beit": "blocks.-1.norm1",
    "Eva": "blocks.-1.norm1",
    "SwinTransformer": "norm",  # (B, h, w, C): permuted
    # Hugging Face transformers
    "ViTForImageClassification": ("vit.layers.-1.layernorm_before", "vit.encoder.layer.-1.layernorm_before"),
    "DeiTForImageClassification": ("deit.layers.-1.layernorm_before", "deit.encoder.layer.-1.layernorm_before"),
    "DeiTForImageClassificationWithTeacher": (
        "deit.layers.-1.layernorm_before",
        "deit.encoder.layer.-1.layernorm_before",
    ),
    "BeitForImageClassification": ("beit.layers.-1.layernorm_before", "beit.encoder.layer.-1.layernorm_before"),
    "SwinForImageClassification": "swin.layernorm",
    "ConvNextForImageClassification": "convnext.encoder.stages.-1",
    "ResNetForImageClassification": "resnet.encoder.stages.-1",
    "EfficientNetForImageClassification": "efficientnet.encoder.top_activation",
    "MobileNetV2ForImageClassification": "mobilenet_v2.conv_1x1",
    "RegNetForImageClassification": "regnet.encoder.stages.-1",
}


@dataclass(frozen=True)
class Layout:
    """How a layer's output is laid out: "channels_first", "channels_last" or "tokens" (with
    ``prefix`` leading non-patch tokens), on an (h, w) grid."""

    kind: str
    grid: tuple[int, int]
    prefix: int = 0

    def reshape_transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The function that turns the layer's output into (B, C, h, w); None for channels first."""
        if self.kind == "channels_last":
            return channels_last_to_grid
        if self.kind == "tokens":
            return functools.partial(tokens_to_grid, prefix_tokens=self.prefix, grid=self.grid)
        return None


@dataclass(frozen=True)
class TargetLayer:
    """A classifier's CAM layer: its dotted name, the module, and its output's layout."""

    name: str
    module: nn.Module
    layout: Layout


def tokens_to_grid(tokens: torch.Tensor, prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """Transformer tokens -> feature map: drop the prefix (class) tokens, reshape patches.

    Args:
        tokens: (B, prefix_tokens + h * w, C).
        prefix_tokens: number of leading non-patch tokens.
        grid: (h, w) patch grid.

    Returns:
        (B, C, h, w).
    """
    patches = tokens[:, prefix_tokens:, :]
    return patches.reshape(patches.shape[0], grid[0], grid[1], patches.shape[2]).permute(0, 3, 1, 2)


def channels_last_to_grid(features: torch.Tensor) -> torch.Tensor:
    """(B, h, w, C) -> (B, C, h, w)."""
    return features.permute(0, 3, 1, 2)


def layouts_of(shape: tuple[int, ...], image_size: int, min_grid: int = MIN_GRID) -> list[Layout]:
    """Every layout an output of this shape can have for a square input of ``image_size`` pixels.

    A spatial side must be at least ``min_grid`` and at most the input's; a channel count must
    differ from the grid's sides (else the axes cannot be told apart).
    """
    found = []
    if len(shape) == 4:
        _, first, second, third = shape
        fits = range(min_grid, image_size + 1)
        if second == third and second in fits and first != second:
            found.append(Layout("channels_first", (second, third)))
        if first == second and first in fits and third != first:
            found.append(Layout("channels_last", (first, second)))
    elif len(shape) == 3:
        tokens = shape[1]
        for prefix in range(MAX_PREFIX_TOKENS + 1):
            side = math.isqrt(max(tokens - prefix, 0))
            if side * side == tokens - prefix and min_grid <= side <= image_size:
                found.append(Layout("tokens", (side, side), prefix))
                break  # the fewest prefix tokens: 1 + 196 is a class token and 14 x 14 patches
    return found


def layer_by_name(model: nn.Module, name: str) -> nn.Module:
    """The submodule at a dotted path ("blocks.-1.norm1": negative indices count from the end).

    Raises:
        ValueError: no such submodule; names the children where the path stops.
    """
    module = model
    for part in name.split("."):
        children = dict(module.named_children())
        if part.lstrip("-").isdigit() and isinstance(module, nn.ModuleList | nn.Sequential):
            index = int(part)
            if not -len(module) <= index < len(module):
                raise ValueError(f"no layer {name!r}: {part} is out of range for {len(module)} entries")
            module = module[index]
        elif part in children:
            module = children[part]
        else:
            raise ValueError(f"no layer {name!r}: {part!r} is not among {sorted(children)[:20]}")
    return module


def _probe_image(image_size: int, device: torch.device) -> torch.Tensor:
    return torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _layout_of_layer(model: nn.Module, name: str, module: nn.Module, image_size: int) -> Layout:
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, output: outputs.append(output))
    try:
        with torch.no_grad():
            model(_probe_image(image_size, _device(model)))
    finally:
        handle.remove()
    if len(outputs) != 1 or not isinstance(outputs[0], torch.Tensor):
        raise ValueError(f"the target layer {name!r} ran {len(outputs)} times or gave no tensor; it must run once")
    shape = tuple(outputs[0].shape)
    layouts = layouts_of(shape, image_size, min_grid=1)  # a chosen layer may give a 1 x 1 map (tiny inputs)
    if len(layouts) != 1:
        what = "fits no layout" if not layouts else "fits several layouts"
        raise ValueError(
            f"the target layer {name!r} gives {shape} for a {image_size}-pixel image, which {what} "
            "((B, C, h, w), (B, h, w, C) or tokens): pass target_layer=NAME"
        )
    return layouts[0]


def probe_target_layer(model: nn.Module, image_size: int) -> str:
    """The dotted name of the layer a CAM should read, found by one forward and backward pass.

    Raises:
        ValueError: no layer gives a spatial map or token grid with a gradient; names the last
            few layers seen.
    """
    seen: dict[str, list[torch.Tensor]] = {}
    grids: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                seen.setdefault(name, []).append(output)
                if output.requires_grad and len(layouts_of(tuple(output.shape), image_size)) == 1:
                    output.register_hook(lambda gradient: grids.__setitem__(name, gradient))

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name]
    try:
        with torch.enable_grad():
            pixels = _probe_image(image_size, _device(model)).requires_grad_(True)
            logits = model(pixels)
            logits[0, logits[0].argmax()].backward()
    finally:
        for handle in handles:
            handle.remove()
    candidates = []
    for name, outputs in seen.items():  # in the order the layers finished
        if len(outputs) != 1 or name not in grids:
            continue
        (layout,) = layouts_of(tuple(outputs[0].shape), image_size)
        gradient = grids[name]
        patches = gradient[:, layout.prefix :] if layout.kind == "tokens" else gradient
        if patches.abs().amax() > 0:
            candidates.append((name, layout))
    if not candidates:
        raise ValueError(
            f"no layer of {type(model).__name__} gives a spatial map or token grid with a gradient: "
            f"pass target_layer=NAME (last layers: {list(seen)[-5:]})"
        )
    first_kind = [c for c in candidates if c[1].kind == "channels_first"]
    others = [c for c in candidates if c[1].kind != "channels_first"]
    if others:
        norms = [c for c in others if isinstance(layer_by_name(model, c[0]), nn.LayerNorm)]
        return (norms or others)[-1][0]
    return first_kind[-1][0]


def _declared_layer(family: nn.Module) -> str | None:
    """The declared target layer of the family's class that exists in this model, or None."""
    declared = DECLARED_LAYERS.get(type(family).__name__)
    for path in (declared,) if isinstance(declared, str) else declared or ():
        try:
            layer_by_name(family, path)
        except ValueError:
            continue
        return path
    return None


def find_target_layer(
    model: nn.Module, image_size: int, name: str | None = None, family: nn.Module | None = None
) -> TargetLayer:
    """The CAM layer of a classifier: ``name`` if given, else the declared one of its family,
    else the probe's; with its layout read from its output.

    Args:
        model: the classifier, normalised (B, 3, H, W) -> (B, K) logits, in eval mode.
        image_size: its input side (the probe image is square).
        name: a dotted path relative to ``family`` (the user's override).
        family: the network whose class names the family and whose paths names are relative to
            (a wrapped model's inner network); default ``model``.

    Raises:
        ValueError: no such layer, a layer that does not run once, or an output whose layout
            cannot be told (names the layer and its shape).
    """
    family = family if family is not None else model
    chosen = name or _declared_layer(family)
    if chosen is None:
        prefix = next((n for n, m in model.named_modules() if m is family), "")
        probed = probe_target_layer(model, image_size)
        chosen = probed[len(prefix) + 1 :] if prefix and probed.startswith(prefix + ".") else probed
    module = layer_by_name(family, chosen)
    return TargetLayer(chosen, module, _layout_of_layer(model, chosen, module, image_size))
