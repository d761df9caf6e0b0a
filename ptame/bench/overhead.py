"""Benchmark: cost of explaining the top-1 class with P-TAME, as a ratio to a bare forward pass.

    python -m ptame.bench.overhead [--backbones vgg16 resnet50 vit_b_16] [--repeats 20]
    python -m ptame.bench [the same options]

For each random-initialised backbone (ResNet-18 auxiliary, batch 1, 224x224, CPU unless
--device says otherwise), measured in the same run: the median time of a bare backbone forward,
and of a backbone forward followed by ``explain`` for its top-1 class.
"""

import argparse

import torch

from ptame.bench.timing import median_seconds
from ptame.explainer import PTAME
from ptame.loading.backbones import PAPER_BACKBONES, create_backbone

TARGETS = {name: paper.overhead_target for name, paper in PAPER_BACKBONES.items()}


def explain_overhead(name: str, repeats: int, device: torch.device) -> tuple[float, float]:
    """(bare forward seconds, forward + explain top-1 seconds) for one backbone."""
    backbone = create_backbone(name, pretrained=False).to(device)
    explainer = PTAME(num_classes=len(backbone.class_names), pretrained_auxiliary=False).to(device).eval()
    pixels = torch.rand(1, 3, 224, 224, device=device)

    def forward() -> torch.Tensor:
        return backbone.logits(pixels)

    def forward_and_explain() -> torch.Tensor:
        top1 = backbone.logits(pixels).argmax(dim=1)
        return explainer.explain(pixels, top1)

    with torch.inference_mode():
        # Interleave the two measurements so that machine noise hits both alike.
        bare, explained = [], []
        for _ in range(3):
            bare.append(median_seconds(forward, device, repeats, warmup=3))
            explained.append(median_seconds(forward_and_explain, device, repeats, warmup=3))
    return min(bare), min(explained)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list(TARGETS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch 1, 224x224, ResNet-18 auxiliary")
    print(f"{'backbone':<10} {'forward ms':>11} {'+explain ms':>12} {'ratio':>7} {'target':>7}")
    for name in args.backbones:
        bare, explained = explain_overhead(name, args.repeats, device)
        target = TARGETS.get(name)
        verdict = "" if target is None else ("ok" if explained / bare <= target else "MISSED")
        print(
            f"{name:<10} {bare * 1e3:>11.1f} {explained * 1e3:>12.1f} {explained / bare:>7.3f} "
            f"{target if target is not None else '':>7} {verdict}"
        )


if __name__ == "__main__":
    main()
