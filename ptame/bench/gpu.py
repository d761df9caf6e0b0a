"""GPU figures in one run: training throughput, P-TAME's overhead, Score-CAM, the evaluation.

    python -m ptame.bench.gpu [--device cuda] [--out runs/bench-gpu]      # about 3-5 minutes on one H100/H200
    python -m ptame.bench.gpu --device cpu --quick --out DIR              # tiny sizes: the script runs (seconds)

Random-initialised networks (nothing is downloaded), measured in this order, each after warm-up:

1. ``training``: P-TAME's head trained against ResNet-50 (ResNet-18 auxiliary, 224x224, batch 32,
   channels-last, ``ptame.training.train_explainer``), images/s over ``--steps`` steps, in fp32 and
   under bf16 autocast. Target on one H100: >= 2000 images/s in bf16 (an ImageNet epoch in ~11 min).
   ``design``: the same training against the reference design (all K maps in fp32), ``python -m
   train bench`` in a subprocess, one round: images/s of each and the ratio. Target: >= 2 on one H100.
2. ``overhead``: P-TAME's ratio, (classifier forward + ``explain`` of the top-1 class) / classifier
   forward, ResNet-50, at batch 1 and 32, median of ``--repeats``. Target: <= 1.5 at batch 1.
3. ``score_cam``: ptame's Score-CAM (32 masked copies per pass) against pytorch-grad-cam's ScoreCAM
   (its batch of 16) on ResNet-50, one image: per-map correlation, time ratio and peak CUDA memory
   ratio (ptame / pytorch-grad-cam). Targets: >= 0.999, <= 0.3, <= 0.3.
4. ``evaluation``: ``python -m train evaluate --checkpoint checkpoints/shapes --data shapes --images 64``
   (one process, a subprocess: ``train`` is a layer above this one), every method and metric at the
   paper's settings (RISE 8000 masks), in fp32 and with ``--amp``: the wall time, the cost line the
   command prints, and each method's s / image and AD 100% / IC 100% / deletion / insertion.

Writes OUT/bench-gpu.json (every figure) and OUT/bench-gpu.md (the table below), and prints the table:

    | figure | value | target |
    |---|---:|---|
    | training images/s, resnet50, fp32 | ... | |
    | training images/s, resnet50, bf16 | ... | >= 2000 (H100) |
    | training throughput ratio, ptame / reference design (train bench) | ... | >= 2 (H100) |
    | P-TAME overhead, resnet50, batch 1 | ... | <= 1.5 |
    | P-TAME overhead, resnet50, batch 32 | ... | |
    | Score-CAM map correlation | ... | >= 0.999 |
    | Score-CAM time ratio | ... | <= 0.3 |
    | Score-CAM peak memory ratio | ... | <= 0.3 |
    | evaluation wall s, 64 images, fp32 / bf16 | ... | |
    | evaluation s / image, P-TAME ... RISE (fp32, bf16) | ... | |

``--quick`` shrinks every size (timm's test_resnet at 64x64, batch 4, 2 steps; 2 evaluation images with
P-TAME, Grad-CAM and RISE of 16 masks, AD/IC and deletion/insertion) to check the script end to end on
a CPU (about a minute on 2 cores).
"""

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ptame.bench.timing import median_seconds, synchronize
from ptame.explainer import PTAME
from ptame.loading.backbones import Backbone, create_backbone
from ptame.methods.score_cam import score_cam
from ptame.perturb import normalize
from ptame.training import TrainSettings, train_explainer

ROOT = Path(__file__).resolve().parents[2]
TARGETS = {"bf16 images/s": 2000.0, "overhead": 1.5, "correlation": 0.999, "time ratio": 0.3, "memory ratio": 0.3}
METHOD_COLUMNS = ("seconds_per_image", "ad_100", "ic_100", "deletion_auc", "insertion_auc")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What the bench runs on: the full run's or ``--quick``'s."""

    backbone: str = "resnet50"
    auxiliary: str = "resnet18.tv_in1k"
    image: int = 224
    batch: int = 32
    steps: int = 30
    warmup: int = 5
    repeats: int = 20
    evaluation_images: int = 64
    evaluation_options: tuple[str, ...] = ()


QUICK = Sizes(
    *("test_resnet", "test_resnet", 64, 4, 2, 1, 2, 2),
    ("--methods", "ptame", "gradcam", "rise", "--rise-masks", "16", "--metrics", "ad_ic", "deletion_insertion"),
)


def models(sizes: Sizes, device: torch.device) -> tuple[Backbone, PTAME]:
    """The random-initialised classifier and a 1000-class explainer over the auxiliary network, on ``device``."""
    torch.manual_seed(0)
    backbone = create_backbone(sizes.backbone, pretrained=False).to(device)
    explainer = PTAME(num_classes=len(backbone.class_names), auxiliary=sizes.auxiliary, pretrained_auxiliary=False)
    return backbone, explainer.to(device)


def training_images_per_s(sizes: Sizes, device: torch.device, amp: bool) -> float:
    """Images/s of ``train_explainer`` on synthetic (batch, 3, S, S) images, after ``warmup`` steps."""
    backbone, explainer = models(sizes, device)
    settings = TrainSettings(amp=amp, channels_last=True, log_every=1000)
    images = torch.rand(sizes.batch, 3, sizes.image, sizes.image, generator=torch.Generator().manual_seed(0))
    batches = [images.to(device)] * sizes.warmup
    mean, std = backbone.preprocessing.mean, backbone.preprocessing.std
    train_explainer(backbone.model, explainer, batches, mean, std, settings, device=device, progress=False)
    synchronize(device)
    start = time.perf_counter()
    batches = [images.to(device)] * sizes.steps
    train_explainer(backbone.model, explainer, batches, mean, std, settings, device=device, progress=False)
    synchronize(device)
    return sizes.batch * sizes.steps / (time.perf_counter() - start)


def overhead(sizes: Sizes, device: torch.device, batch: int) -> dict[str, float]:
    """Median seconds of a classifier forward and of forward + ``explain`` (top-1), and their ratio."""
    backbone, explainer = models(sizes, device)
    explainer.eval()
    pixels = torch.rand(batch, 3, sizes.image, sizes.image, device=device)

    def forward() -> torch.Tensor:
        return backbone.logits(pixels)

    def forward_and_explain() -> torch.Tensor:
        return explainer.explain(pixels, backbone.logits(pixels).argmax(dim=1))

    with torch.inference_mode():
        bare = median_seconds(forward, device, sizes.repeats, warmup=3)
        explained = median_seconds(forward_and_explain, device, sizes.repeats, warmup=3)
    return {"forward_s": bare, "explained_s": explained, "ratio": explained / bare}


def score_cams(sizes: Sizes, device: torch.device) -> dict[str, float]:
    """ptame's Score-CAM against pytorch-grad-cam's on one image: correlation, seconds, peak memory."""
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    backbone, _ = models(sizes, device)
    pixels = torch.rand(1, 3, sizes.image, sizes.image, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        classes = backbone.logits(pixels).argmax(dim=1)

    def ours() -> np.ndarray:
        return score_cam(backbone, pixels, classes, batch_size=32).cpu().numpy()

    def theirs() -> np.ndarray:
        cam = ScoreCAM(backbone.model, [backbone.target_layer])
        try:
            normalized = normalize(pixels, backbone.preprocessing.mean, backbone.preprocessing.std)
            return cam(normalized, [ClassifierOutputTarget(int(classes[0]))])
        finally:
            cam.activations_and_grads.release()

    figures: dict[str, float] = {}
    maps = {}
    for name, function in (("ptame", ours), ("pytorch_grad_cam", theirs)):
        function()  # warm-up
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        start = time.perf_counter()
        maps[name] = function()
        synchronize(device)
        figures[f"{name}_s"] = time.perf_counter() - start
        if device.type == "cuda":
            figures[f"{name}_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    figures["correlation"] = float(np.corrcoef(maps["ptame"].ravel(), maps["pytorch_grad_cam"].ravel())[0, 1])
    figures["time_ratio"] = figures["ptame_s"] / figures["pytorch_grad_cam_s"]
    if device.type == "cuda":
        figures["memory_ratio"] = figures["ptame_peak_mb"] / figures["pytorch_grad_cam_peak_mb"]
    return figures


def design_ratio(sizes: Sizes, device: str) -> dict[str, float]:
    """``python -m train bench`` (a subprocess): training images/s of ptame's head against the reference
    design (all K maps in fp32), one round, and the ratio ptame / reference.

    Raises:
        RuntimeError: the command failed or printed no ratio.
    """
    command = [sys.executable, "-m", "train", "bench", "--backbone", sizes.backbone, "--device", device]
    command += ["--batch-size", str(sizes.batch), "--image-size", str(sizes.image), "--rounds", "1"]
    command += ["--steps", str(sizes.steps), "--warmup", str(sizes.warmup)]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    figures = {}
    for line in completed.stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("ptame", "reference"):
            figures[f"{words[0]}_images_per_s"] = float(words[1])
        if line.startswith("throughput ratio ptame / reference:"):
            figures["ratio"] = float(words[-1].rstrip("x"))
    if completed.returncode != 0 or "ratio" not in figures:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stdout[-2000:]}{completed.stderr[-3000:]}")
    return figures


def evaluation(sizes: Sizes, device: str, out: Path, amp: bool) -> dict[str, object]:
    """``python -m train evaluate`` of the shapes demo in one process: wall seconds, cost line, per-method figures.

    Raises:
        RuntimeError: the command failed (with the end of its error output).
    """
    folder = out / ("evaluation-bf16" if amp else "evaluation-fp32")
    command = [sys.executable, "-m", "train", "evaluate", "--checkpoint", str(ROOT / "checkpoints" / "shapes")]
    command += ["--data", "shapes", "--images", str(sizes.evaluation_images), "--device", device]
    command += [*sizes.evaluation_options, *(["--amp"] if amp else []), "--out", str(folder)]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    with open(folder / "evaluation.csv", newline="", encoding="utf-8") as file:
        rows = {row["method"]: {key: float(row[key]) for key in METHOD_COLUMNS} for row in csv.DictReader(file)}
    cost = [line for line in completed.stderr.splitlines() if line.startswith(("Expected cost", "At "))]
    return {"wall_s": wall, "cost": cost, "methods": rows}


def run(sizes: Sizes, device: str, out: Path) -> dict[str, object]:
    """Every measurement (the module docstring's list), as one JSON-ready dictionary."""
    where = torch.device(device)
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name(where) if where.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "sizes": dataclasses.asdict(sizes),
    }
    results["training"] = {
        "fp32_images_per_s": training_images_per_s(sizes, where, amp=False),
        "bf16_images_per_s": training_images_per_s(sizes, where, amp=True) if where.type == "cuda" else None,
    }
    results["design"] = design_ratio(sizes, device)
    results["overhead"] = {f"batch_{batch}": overhead(sizes, where, batch) for batch in (1, sizes.batch)}
    results["score_cam"] = score_cams(sizes, where)
    results["evaluation"] = {
        "fp32": evaluation(sizes, device, out, amp=False),
        "bf16": evaluation(sizes, device, out, amp=True),
    }
    return results


def table(results: dict[str, object]) -> str:
    """The results as the module docstring's Markdown table."""
    sizes, training = results["sizes"], results["training"]
    name = sizes["backbone"]
    lines = ["| figure | value | target |", "|---|---:|---|"]

    def row(figure: str, value: float | None, target: str = "", digits: int = 3) -> None:
        lines.append(f"| {figure} | {'n/a' if value is None else f'{value:.{digits}f}'} | {target} |")

    row(f"training images/s, {name}, fp32", training["fp32_images_per_s"], digits=1)
    row(f"training images/s, {name}, bf16", training["bf16_images_per_s"], ">= 2000 (H100)", 1)
    design = results["design"]
    row("training throughput ratio, ptame / reference design (train bench)", design["ratio"], ">= 2 (H100)", 2)
    for batch, figures in results["overhead"].items():
        target = f"<= {TARGETS['overhead']}" if batch == "batch_1" else ""
        row(f"P-TAME overhead, {name}, {batch.replace('_', ' ')}", figures["ratio"], target)
    score = results["score_cam"]
    row("Score-CAM map correlation", score["correlation"], f">= {TARGETS['correlation']}", 4)
    row("Score-CAM time ratio (ptame / pytorch-grad-cam)", score["time_ratio"], f"<= {TARGETS['time ratio']}")
    row("Score-CAM peak memory ratio", score.get("memory_ratio"), f"<= {TARGETS['memory ratio']}")
    runs = results["evaluation"]
    images = sizes["evaluation_images"]
    lines.append(f"| evaluation wall s, {images} images, fp32 / bf16 | {runs['fp32']['wall_s']:.1f} / "
                 f"{runs['bf16']['wall_s']:.1f} | |")  # fmt: skip
    for method, figures in runs["fp32"]["methods"].items():
        bf16 = runs["bf16"]["methods"][method]
        lines.append(
            f"| evaluation {method}: s / image, AD 100%, IC 100%, deletion, insertion (fp32; bf16) | "
            + " ".join(f"{figures[key]:.4g}" for key in METHOD_COLUMNS)
            + "; "
            + " ".join(f"{bf16[key]:.4g}" for key in METHOD_COLUMNS)
            + " | |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Parse the options, measure, write OUT/bench-gpu.json and OUT/bench-gpu.md, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the script runs (CPU, seconds)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-gpu", help="where the results go")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: pass --device cpu (with --quick for a check of the script)")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = run(QUICK if args.quick else Sizes(), args.device, args.out)
    results["total_s"] = time.perf_counter() - started
    markdown = table(results)
    (args.out / "bench-gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "bench-gpu.md").write_text(markdown)
    print(f"{results['device']}, torch {results['torch']}, {results['total_s']:.0f} s in all\n")
    print(markdown)


if __name__ == "__main__":
    main()
