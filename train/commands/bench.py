"""Benchmark: training throughput and peak memory of P-TAME vs the reference design.

    python -m train bench [--backbone resnet50] [--device cuda] [--batch-size 32] [--steps 20] [--compile]

On synthetic (B, 3, 224, 224) images (no dataset), with random-initialised networks and the
backbone's recipe (train/recipes.py: AdamW amsgrad, OneCycle, bf16 autocast on CUDA, channels
last), it trains for --steps after --warmup steps, measured in the same run for two designs:

- ptame: this project's head (only the batch's target classes' fuser rows, each level fused at
  its own resolution, then upsampled);
- reference: the design of the method doc, all K maps in fp32: every level upsampled to the
  finest resolution, concatenated, the full fuser to K channels, then the targets' maps indexed.

Both compute the same loss (tests/test_train_bench.py). The designs alternate for --rounds
rounds (machine noise hits both alike); the best round of each is shown. Each measurement runs
in a fresh process, so that its peak memory is its own: on CUDA ``torch.cuda.max_memory_allocated``
during the timed steps; on CPU the process's peak resident memory (everything: Python,
libraries, weights).
Targets on one H100: >= 2,000 images/s for ptame and >= 2x the reference's throughput.
"""

import argparse
import itertools
import multiprocessing
import resource
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import torch

from ptame.explainer import PTAME
from ptame.head import upsample_to_finest
from ptame.loading.backbones import create_backbone
from ptame.training import train_explainer
from train.recipes import recipe_for

DESIGNS = ("ptame", "reference")
TARGET_IMAGES_PER_S = 2000.0
TARGET_RATIO = 2.0


class ReferenceExplainer(PTAME):
    """The reference design: all K maps in fp32 (upsample every level by the official x2 cascade,
    concatenate, full fuser), then indexed."""

    def forward(self, pixels: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Raw maps (B, k, h, w) of ``classes`` (all K if None), computed for all K classes."""
        features = self.features(pixels)
        size = max((f.shape[-2:] for f in features), key=lambda hw: hw[0] * hw[1])
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            levels = [
                upsample_to_finest(block(level.float()), tuple(size))
                for level, block in zip(features, self.head.levels)
            ]
            maps = self.head.fuser(torch.cat(levels, dim=1))
        return maps if classes is None else maps[:, classes]


def measure(
    design: str,
    backbone_name: str,
    batch_size: int,
    steps: int,
    warmup: int,
    device: str,
    compile: bool,
    image_size: int = 224,
) -> dict[str, float]:
    """Train one design on synthetic images; its throughput and peak memory.

    Returns:
        images_per_s over the timed steps, peak_memory_bytes (see the module docstring), and
        loss (the last step's, a sanity check).
    """
    torch.manual_seed(0)
    backbone = create_backbone(backbone_name, pretrained=False)
    recipe = recipe_for(backbone_name)
    explainer_class = PTAME if design == "ptame" else ReferenceExplainer
    explainer = explainer_class(
        num_classes=len(backbone.class_names),
        auxiliary=recipe.auxiliary,
        feature_levels=recipe.feature_levels,
        pretrained_auxiliary=False,
    )
    pixels = torch.rand(batch_size, 3, image_size, image_size, device=device)
    settings = recipe.settings(compile=compile, log_every=max(steps, 1))
    mean, std = backbone.preprocessing.mean, backbone.preprocessing.std

    def train(count: int) -> list[dict[str, float]]:
        return train_explainer(
            backbone.model,
            explainer,
            itertools.repeat(pixels, count),
            mean,
            std,
            settings,
            total_steps=count,
            device=device,
            progress=False,
        )

    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    if warmup > 0:
        train(warmup)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    record = train(steps)[-1]
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"images_per_s": record["images_per_s"], "peak_memory_bytes": float(peak), "loss": record["loss"]}


def measure_in_process(design: str, arguments: Sequence[object]) -> dict[str, float]:
    """``measure`` in a fresh process (its own peak memory)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, design, *arguments).result()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m train bench``."""
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32, help="default: the recipe's 32")
    parser.add_argument("--steps", type=int, help="timed steps (default: 20 on CUDA, 2 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 5 on CUDA, 1 on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile classifier and auxiliary network")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the designs this many times; keep the best")


def run(args: argparse.Namespace) -> None:
    """Measure both designs and print their throughput, peak memory and the targets."""
    on_cuda = args.device.startswith("cuda")
    steps = args.steps or (20 if on_cuda else 2)
    warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    name = torch.cuda.get_device_name(args.device) if on_cuda else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{args.backbone} (random weights), {name}, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
        f"{warmup} warm-up + {steps} timed steps, bf16 autocast {'on' if on_cuda else 'off (CPU)'}, "
        f"channels last, compile {'on' if args.compile else 'off'}"
    )
    memory = "peak CUDA memory" if on_cuda else "peak process RSS"
    print(f"{'design':<10} {'images/s':>10} {memory + ' (GiB)':>24} {'loss':>8}")
    arguments = (args.backbone, args.batch_size, steps, warmup, args.device, args.compile, args.image_size)
    rounds = [{design: measure_in_process(design, arguments) for design in DESIGNS} for _ in range(args.rounds)]
    results = {design: max((each[design] for each in rounds), key=lambda r: r["images_per_s"]) for design in DESIGNS}
    for design, result in results.items():
        print(
            f"{design:<10} {result['images_per_s']:>10.2f} {result['peak_memory_bytes'] / 2**30:>24.2f} "
            f"{result['loss']:>8.4f}"
        )
    ratio = results["ptame"]["images_per_s"] / results["reference"]["images_per_s"]
    print(f"throughput ratio ptame / reference: {ratio:.2f}x")
    if on_cuda:
        fast = results["ptame"]["images_per_s"] >= TARGET_IMAGES_PER_S
        print(
            f"targets (one H100): >= {TARGET_IMAGES_PER_S:.0f} images/s {'ok' if fast else 'MISSED'}, "
            f">= {TARGET_RATIO:.0f}x the reference {'ok' if ratio >= TARGET_RATIO else 'MISSED'}"
        )
