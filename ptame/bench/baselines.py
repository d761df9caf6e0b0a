"""Benchmark of the baselines: streamed Score-CAM against pytorch-grad-cam's, and the cost of every method.

    python -m ptame.bench.baselines [--batch-size 8] [--device cpu]
    python -m ptame.bench.baselines --costs [--backbones vgg16 resnet50 vit_b_16] [--rise-masks 128]

Default: one 224x224 image, random-initialised ResNet-50 (seed 0), its top-1 class. ptame's
``score_cam`` (``--batch-size`` masked inputs per pass) and pytorch-grad-cam's ``ScoreCAM`` (its
default batch of 16) each run once, in a fresh subprocess of their own that imports what its
method needs (pytorch-grad-cam also loads scikit-learn and matplotlib, about 150 MB of resident
memory that ptame's Score-CAM does not need), after one warm-up forward pass. Printed, from that one run: the per-map
Pearson correlation of the two maps, the time ratio (ptame / pytorch-grad-cam) and two peak memory
ratios read from the kernel's high-water mark of resident memory (``ru_maxrss``): of the whole
process, and of the method alone (peak minus the mark reached before the call: interpreter,
libraries, model and warm-up are the same for both).

``--costs``: per-image time of P-TAME (``explain`` of one class, random ResNet-18 auxiliary network),
Grad-CAM, Grad-CAM++, Score-CAM, Ablation-CAM and RISE for random-initialised backbones, as a ratio
to one forward pass of that backbone (batch 1, 224x224). RISE is timed with ``--rise-masks`` masks and extrapolated
linearly per mask to ``--rise-target`` masks; the table says so.

On a CPU shared with other work, ``--threads 1`` gives steadier figures: with several threads, every
operation waits for the slowest thread, and small (batch-1) operations suffer most.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ptame.bench.timing import median_seconds, synchronize
from ptame.explainer import PTAME
from ptame.loading.backbones import create_backbone
from ptame.methods.ablation_cam import ablation_cam
from ptame.methods.grad_cam import grad_cam
from ptame.methods.grad_cam_plus_plus import grad_cam_plus_plus
from ptame.methods.rise import rise
from ptame.methods.score_cam import score_cam
from ptame.perturb import normalize

SCORE_CAM_TARGETS = {"correlation": 0.999, "memory": 0.3, "time (CPU)": 0.8, "time (GPU)": 0.3}
WORKERS = ("ptame", "pytorch-grad-cam")


def peak_resident_mb() -> float:
    """The process's high-water mark of resident memory, in MB (Linux reports ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score_cam_worker(worker: str, batch_size: int, device: torch.device, result: Path) -> None:
    """Run one Score-CAM implementation once; write its map (.npy) and figures (.json) next to ``result``."""
    if worker != "ptame":  # imported before any figure is taken, and only here (module docstring)
        from pytorch_grad_cam import ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    torch.manual_seed(0)
    backbone = create_backbone("resnet50", pretrained=False).to(device)
    pixels = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        classes = backbone.logits(pixels).argmax(dim=1)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_resident_mb()
    start = time.perf_counter()
    if worker == "ptame":
        maps = score_cam(backbone, pixels, classes, batch_size=batch_size).cpu().numpy()
    else:
        normalized = normalize(pixels, backbone.preprocessing.mean, backbone.preprocessing.std)
        cam = ScoreCAM(backbone.model, [backbone.target_layer])
        try:
            maps = cam(normalized, [ClassifierOutputTarget(int(classes[0]))])
        finally:
            cam.activations_and_grads.release()
    synchronize(device)
    seconds = time.perf_counter() - start
    figures = {"seconds": seconds, "peak_mb": peak_resident_mb(), "before_mb": before}
    if device.type == "cuda":
        figures["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    np.save(result.with_suffix(".npy"), maps)
    result.write_text(json.dumps(figures))


def run_worker(worker: str, batch_size: int, device: str, folder: Path) -> tuple[dict[str, float], np.ndarray]:
    """Run ``score_cam_worker`` in a fresh Python process; its figures and map."""
    result = folder / f"{worker}.json"
    command = [sys.executable, "-m", "ptame.bench.baselines", "--worker", worker, "--result", str(result)]
    command += ["--batch-size", str(batch_size), "--device", device, "--threads", str(torch.get_num_threads())]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"the {worker} Score-CAM worker failed:\n{completed.stderr[-3000:]}")
    return json.loads(result.read_text()), np.load(result.with_suffix(".npy"))


def compare_score_cams(batch_size: int, device: str) -> None:
    """Print the correlation, time and memory ratios of ptame's Score-CAM to pytorch-grad-cam's."""
    print(
        f"Score-CAM, random-initialised resnet50, one 224x224 image, device {device}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(f"ptame score_cam batch {batch_size}; pytorch-grad-cam ScoreCAM default batch 16; load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as folder:
        results = {worker: run_worker(worker, batch_size, device, Path(folder)) for worker in WORKERS}
    (ours, our_map), (theirs, their_map) = results["ptame"], results["pytorch-grad-cam"]
    correlation = float(np.corrcoef(our_map.ravel(), their_map.ravel())[0, 1])
    print(f"load after {os.getloadavg()}")
    print(f"{'':<18} {'seconds':>9} {'peak RSS MB':>12} {'method MB':>10}")
    for worker, (figures, _) in results.items():
        method_mb = figures["peak_mb"] - figures["before_mb"]
        print(f"{worker:<18} {figures['seconds']:>9.1f} {figures['peak_mb']:>12.0f} {method_mb:>10.0f}")
    time_ratio = ours["seconds"] / theirs["seconds"]
    memory_ratio = ours["peak_mb"] / theirs["peak_mb"]
    method_ratio = (ours["peak_mb"] - ours["before_mb"]) / (theirs["peak_mb"] - theirs["before_mb"])
    time_target = SCORE_CAM_TARGETS["time (GPU)" if device.startswith("cuda") else "time (CPU)"]
    rows = [
        ("map correlation", correlation, SCORE_CAM_TARGETS["correlation"], correlation >= 0.999),
        ("time ratio", time_ratio, time_target, time_ratio <= time_target),
        ("peak RSS ratio, whole process", memory_ratio, SCORE_CAM_TARGETS["memory"], memory_ratio <= 0.3),
        ("peak RSS ratio, method alone", method_ratio, SCORE_CAM_TARGETS["memory"], method_ratio <= 0.3),
    ]
    if "cuda_peak_mb" in ours:
        cuda_ratio = ours["cuda_peak_mb"] / theirs["cuda_peak_mb"]
        rows.append(("peak CUDA memory ratio", cuda_ratio, SCORE_CAM_TARGETS["memory"], cuda_ratio <= 0.3))
    for name, value, target, met in rows:
        bound = ">=" if name == "map correlation" else "<="
        print(f"{name:<30} {value:>8.4f}  target {bound} {target}  {'ok' if met else 'MISSED'}")


def method_costs(
    name: str, device: torch.device, batch_size: int, rise_masks: int, rise_target: int, repeats: int
) -> dict[str, float]:
    """Per-image seconds of a forward pass and of each method, for one random-initialised backbone."""
    torch.manual_seed(0)
    backbone = create_backbone(name, pretrained=False).to(device)
    for module in backbone.model.modules():  # torchvision's ViT starts with an all-zero head: no gradient
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
    explainer = PTAME(num_classes=len(backbone.class_names), pretrained_auxiliary=False).to(device).eval()
    pixels = torch.rand(1, 3, 224, 224, device=device)
    with torch.inference_mode():
        classes = backbone.logits(pixels).argmax(dim=1)

    def forward() -> None:
        with torch.inference_mode():
            backbone.logits(pixels)

    def ptame_explain() -> None:
        with torch.inference_mode():
            explainer.explain(pixels, classes)

    costs = {"forward": median_seconds(forward, device, repeats)}
    costs["P-TAME"] = median_seconds(ptame_explain, device, repeats)
    costs["Grad-CAM"] = median_seconds(lambda: grad_cam(backbone, pixels, classes), device, repeats)
    costs["Grad-CAM++"] = median_seconds(lambda: grad_cam_plus_plus(backbone, pixels, classes), device, repeats)
    start = time.perf_counter()
    score_cam(backbone, pixels, classes, batch_size=batch_size)
    synchronize(device)
    costs["Score-CAM"] = time.perf_counter() - start
    start = time.perf_counter()
    ablation_cam(backbone, pixels, classes, batch_size=batch_size)
    synchronize(device)
    costs["Ablation-CAM"] = time.perf_counter() - start
    start = time.perf_counter()
    rise(backbone, pixels, classes, num_masks=rise_masks, batch_size=batch_size)
    synchronize(device)
    costs[f"RISE ({rise_target} masks, extrapolated from {rise_masks})"] = (
        (time.perf_counter() - start) / rise_masks * rise_target
    )
    return costs


def print_costs(
    backbones: list[str], device: str, batch_size: int, rise_masks: int, rise_target: int, repeats: int
) -> None:
    """Print the per-image time of each method divided by one forward pass, per backbone."""
    print(
        f"per-image time / one forward pass; batch 1, 224x224, random init, device {device}, "
        f"{torch.get_num_threads()} torch threads, load {os.getloadavg()}"
    )
    print(
        f"Score-CAM, Ablation-CAM and RISE run once, {batch_size} masked or ablated inputs per pass; "
        f"the others: median of {repeats} runs"
    )
    table = {
        name: method_costs(name, torch.device(device), batch_size, rise_masks, rise_target, repeats)
        for name in backbones
    }
    methods = list(next(iter(table.values())))
    print(f"{'method':<42}" + "".join(f"{name:>12}" for name in backbones))
    print(f"{'forward pass (ms)':<42}" + "".join(f"{table[name]['forward'] * 1e3:>12.1f}" for name in backbones))
    for method in methods[1:]:
        ratios = "".join(f"{table[name][method] / table[name]['forward']:>12.1f}" for name in backbones)
        print(f"{method:<42}" + ratios)
    print(f"load after {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--costs", action="store_true", help="print the cost table instead of the Score-CAM test")
    parser.add_argument("--backbones", nargs="+", default=["vgg16", "resnet50", "vit_b_16"])
    parser.add_argument("--batch-size", type=int, default=8, help="ptame's masked inputs per forward pass")
    parser.add_argument("--rise-masks", type=int, default=128, help="RISE masks actually run in --costs")
    parser.add_argument(
        "--rise-target", type=int, default=8000, help="RISE masks extrapolated to in --costs (paper: 8000)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker:
        score_cam_worker(args.worker, args.batch_size, torch.device(args.device), args.result)
    elif args.costs:
        print_costs(args.backbones, args.device, args.batch_size, args.rise_masks, args.rise_target, args.repeats)
    else:
        compare_score_cams(args.batch_size, args.device)


if __name__ == "__main__":
    main()
