"""The measured effect of each point where ptame computes P-TAME differently from the official code.

    python -m ptame.bench.differences [--folder checkpoints/shapes] [--images 200]

On a model folder with classifier/ and explainer/ (default: the shapes demo) and the first
``--images`` test images of the shapes world, for the classifier's predicted class, prints:

- BatchNorm folded into the auxiliary network's convolutions (ptame) against the unfolded network:
  the largest difference of the raw maps, relative to their largest magnitude.
- fp32 (ptame's evaluation) against bf16 autocast (the official code's): the raw maps' relative
  difference, the mean absolute difference of the min-max maps, the IoU of their top-15% pixels,
  and AD/IC at 100/50/15% with each.
- Min-max after the bilinear resize to the input (ptame) against min-max at the head's resolution
  followed by the resize: the same figures.

docs/differences.md ("Differences from the official implementation") quotes this command's figures.
"""

import argparse
import copy
from collections.abc import Callable
from pathlib import Path

import timm
import torch

from ptame.datasets.shapes import ShapesDataset
from ptame.maps import normalize_maps, resize_maps
from ptame.metrics import ad_ic
from ptame.serving.loader import LoadedModel, load_model
from ptame.serving.manifest import ModelEntry

AD_IC_FRACTIONS = (1.0, 0.5, 0.15)
TOP_SHARE = 0.15


def unfolded_auxiliary(model: LoadedModel, folder: Path) -> torch.nn.Module:
    """The explainer's auxiliary network as timm builds it, BatchNorm layers not folded."""
    explainer = model.explainer
    name = explainer.auxiliary_name
    if name.startswith("local-dir:") and not Path(name[len("local-dir:") :]).is_absolute():
        name = "local-dir:" + str((folder / "explainer" / name[len("local-dir:") :]).resolve())
    network = timm.create_model(name, pretrained=True, features_only=True, out_indices=explainer.feature_levels)
    return network.eval().requires_grad_(False)


def top_share_iou(first: torch.Tensor, second: torch.Tensor, share: float = TOP_SHARE) -> float:
    """Mean over images of the IoU of the two maps' top-``share`` pixel sets; maps (B, H, W)."""
    count = max(1, round(share * first[0].numel()))
    ious = []
    for a, b in zip(first.flatten(1), second.flatten(1)):
        top_a = set(a.topk(count).indices.tolist())
        top_b = set(b.topk(count).indices.tolist())
        ious.append(len(top_a & top_b) / len(top_a | top_b))
    return sum(ious) / len(ious)


def relative_difference(first: torch.Tensor, second: torch.Tensor) -> float:
    """max |first - second| / max |second|."""
    return float((first - second).abs().max() / second.abs().max())


def ad_ic_row(model: LoadedModel, pixels: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor) -> str:
    """AD/IC at 100/50/15% as a text row (AD: mean drop in %, IC: % of images)."""
    figures = ad_ic(model.backbone, pixels, maps, classes, AD_IC_FRACTIONS)
    cells = []
    for fraction in AD_IC_FRACTIONS:
        percent = round(100 * fraction)
        cells.append(f"AD {percent}% {figures[f'ad_{percent}'].mean():6.2f}")
        cells.append(f"IC {percent}% {100 * figures[f'ic_{percent}'].float().mean():6.2f}")
    return "  ".join(cells)


def compare(
    label: str,
    model: LoadedModel,
    pixels: torch.Tensor,
    classes: torch.Tensor,
    ours: Callable[[], torch.Tensor],
    theirs: Callable[[], torch.Tensor],
) -> None:
    """Print how two (B, H, W) map computations differ, and AD/IC with each."""
    with torch.inference_mode():
        mine, other = ours(), theirs()
    print(f"{label}")
    difference = (mine - other).abs()
    print(f"  mean |difference| of the maps {float(difference.mean()):.5f}, largest {float(difference.max()):.5f}")
    print(f"  top-{round(100 * TOP_SHARE)}% pixel IoU {top_share_iou(mine, other):.4f}")
    print(f"  ptame:    {ad_ic_row(model, pixels, mine, classes)}")
    print(f"  other:    {ad_ic_row(model, pixels, other, classes)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("checkpoints/shapes"), help="classifier/ + explainer/")
    parser.add_argument("--images", type=int, default=200, help="first N shapes test images")
    args = parser.parse_args()
    model = load_model(ModelEntry.from_folder(args.folder), "cpu")
    if not model.has_explainer:
        raise SystemExit(f"{args.folder}: {model.explainer_problem}")
    explainer = model.explainer.eval()
    size = model.backbone.preprocessing.crop
    dataset = ShapesDataset("test", args.images, size)
    pixels = torch.stack([dataset[index][0] for index in range(args.images)])
    with torch.inference_mode():
        classes = model.backbone.logits(pixels).argmax(dim=1)
        rows = torch.arange(args.images)

        def raw_maps(network: torch.nn.Module, bf16: bool = False) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return network(pixels, classes.unique())[rows, torch.unique(classes, return_inverse=True)[1]].float()

        unfolded = copy.deepcopy(explainer)
        unfolded.auxiliary = unfolded_auxiliary(model, args.folder)
        print(f"{args.folder}, first {args.images} shapes test images at {size} px, predicted classes\n")
        print("BatchNorm folded into the auxiliary network (ptame) against unfolded")
        folding = relative_difference(raw_maps(explainer), raw_maps(unfolded))
        print(f"  raw maps: largest difference / largest magnitude {folding:.2e}")
        fp32, bf16 = raw_maps(explainer), raw_maps(explainer, bf16=True)
        rounding = relative_difference(bf16, fp32)
        print(f"fp32 raw maps against bf16 autocast: largest difference / largest magnitude {rounding:.2e}")
    compare(
        "fp32 (ptame) against bf16 autocast (the official code), maps min-max normalised at the input size",
        model,
        pixels,
        classes,
        lambda: normalize_maps(fp32, (size, size)),
        lambda: normalize_maps(bf16, (size, size)),
    )
    compare(
        "min-max after the resize to the input (ptame) against min-max at the head's resolution, then the resize",
        model,
        pixels,
        classes,
        lambda: normalize_maps(fp32, (size, size)),
        lambda: resize_maps(normalize_maps(fp32), (size, size)),
    )


if __name__ == "__main__":
    main()
