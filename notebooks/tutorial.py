# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # ptame tutorial: explain, score, train
#
# Offline, on the shapes world (128x128 images of six solid shapes on clutter) and its demo
# models, committed in `checkpoints/shapes`; a few minutes on 2 CPU cores.
#
# 1. Load the shapes demo: a classifier, its auxiliary network and its trained P-TAME explainer.
# 2. Explain an image with every registered method.
# 3. Score the maps with ptame's metrics (and Quantus's, where it is installed).
# 4. Train a small explainer for a classifier of your own, on a folder of images.
#
# This file is a [jupytext](https://jupytext.readthedocs.io) script: open it as a notebook in
# Jupyter, or run it with `python notebooks/tutorial.py`. CI runs it as a notebook.

# %%
# ruff: noqa: E402 (a notebook imports where each section needs it)
import os
import sys
import time
import warnings
from pathlib import Path

# The repository's root (the notebook may run from notebooks/): ptame and the demo are read from it.
ROOT = next(folder for folder in (Path.cwd(), *Path.cwd().parents) if (folder / "checkpoints" / "shapes").is_dir())
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # a checkout without `pip install -e .`

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Image as Picture
from IPython.display import display
from PIL import Image
from tqdm import TqdmWarning

warnings.filterwarnings("ignore", category=TqdmWarning)  # no ipywidgets here: tqdm's text bars are fine

from ptame.datasets.shapes import SHAPE_CLASSES, SHAPES_MEAN, SHAPES_STD, shapes_sample
from ptame.methods import METHODS
from ptame.serving.loader import load_model
from ptame.serving.manifest import ModelEntry

OUT = ROOT / "runs" / "tutorial"  # runs/ is ignored by git
OUT.mkdir(parents=True, exist_ok=True)
pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 20)
torch.manual_seed(0)
torch.set_num_threads(int(os.environ.get("TUTORIAL_THREADS", "1")))  # 1: steady on a shared machine
started = time.perf_counter()

# %% [markdown]
# ## 1. The shapes demo
#
# `ModelEntry.from_folder` describes a folder holding `classifier/` and `explainer/` (the layout
# `python -m train shapes` and `python -m train explainer` write); `load_model` loads both, as the
# app does.

# %%
model = load_model(ModelEntry.from_folder(ROOT / "checkpoints" / "shapes"))
backbone, explainer = model.backbone, model.explainer
print(backbone.name, "|", len(backbone.class_names), "classes:", ", ".join(backbone.class_names))
print("input:", backbone.preprocessing.crop, "px; CAM layer:", type(backbone.target_layer).__name__)

# %% [markdown]
# ## 2. Every method on one image
#
# An image of the test split, its prediction, and the map of every registered method (the
# registry: `ptame.methods.METHODS`). Every method takes pixels in [0, 1] and gives `(B, H, W)`
# maps in [0, 1]. RISE runs with 1000 masks here (the app's 2000, the paper's 8000).
# Where captum is installed, its two methods are registered too, beside the built-ins.

# %%
try:
    from ptame.interop import captum as captum_methods

    captum_methods.register()
except ImportError:
    print("captum is not installed: the built-in methods only")

sample = shapes_sample(3, "test", 128)
pixels, mask = sample.pixels[None], sample.mask[None]
with torch.no_grad():
    probabilities = backbone.logits(pixels).softmax(dim=1)[0]
predicted = torch.tensor([int(probabilities.argmax())])
print(f"true class: {SHAPE_CLASSES[sample.label]}; predicted: {SHAPE_CLASSES[predicted.item()]}", end=" ")
print(f"(probability {probabilities.max():.3f})")

options = {"rise": {"num_masks": 1000}}
maps, seconds = {}, {}
for key, method in METHODS.items():
    start = time.perf_counter()
    extra = {"explainer": explainer} if method.uses_explainer else {}
    maps[key] = method(backbone, pixels, predicted, **extra, **options.get(key, {}))
    seconds[key] = time.perf_counter() - start

figure, axes = plt.subplots(1, len(maps) + 1, figsize=(2.2 * (len(maps) + 1), 2.6))
axes[0].imshow(sample.picture())
axes[0].set_title("image")
for axis, (key, saliency) in zip(axes[1:], maps.items()):
    axis.imshow(sample.picture())
    axis.imshow(saliency[0], cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axis.set_title(f"{METHODS[key].name}\n{seconds[key]:.2f} s", fontsize=8)
for axis in axes:
    axis.axis("off")
figure.tight_layout()
figure.savefig(OUT / "every-method.png", dpi=80)
plt.close(figure)
display(Picture(filename=str(OUT / "every-method.png")))

# %% [markdown]
# ## 3. Scoring the maps
#
# ptame's metrics take maps, not methods: `score_maps` runs AD/IC at 100/50/15%, deletion and
# insertion, ROAD (Telea inpainting, as the paper's protocol) and, with ground-truth masks, the
# pointing games, on one test image of each class (RISE with 500 masks here). Any attribution
# scores the same way: `as_maps` turns a captum attribution, or your own `(B, H, W)` array, into
# ptame's maps.

# %%
from ptame.interop.maps import as_maps, score_maps

batch = [shapes_sample(index, "test", 128) for index in range(6)]
images = torch.stack([s.pixels for s in batch])
masks = torch.stack([s.mask for s in batch])
with torch.no_grad():
    classes = backbone.logits(images).argmax(dim=1)
score_options = {"rise": {"num_masks": 500}}
rows = {}
for key, method in METHODS.items():
    extra = {"explainer": explainer} if method.uses_explainer else {}
    method_maps = method(backbone, images, classes, **extra, **score_options.get(key, {}))
    rows[METHODS[key].name] = score_maps(backbone, images, method_maps, classes, masks, deletion_steps=16)
# Your own maps: here a blurred copy of the object masks, as a (B, H, W) numpy array.
blurred = torch.nn.functional.avg_pool2d(masks[:, None].float(), 15, stride=1, padding=7)[:, 0].numpy()
rows["your own maps"] = score_maps(backbone, images, as_maps(blurred), classes, masks, deletion_steps=16)
scores = pd.DataFrame(rows).T.round(3)
display(scores[["ad_100", "ic_100", "ad_15", "deletion_auc", "insertion_auc", "road_morf_auc", "pointing_game"]])

# %% [markdown]
# AD (average drop, %) and deletion and ROAD most-relevant-first are better lower; IC, insertion
# and the pointing game higher. Where Quantus is installed, its metrics run on the same maps
# through `ptame.interop.quantus`: `PixelClassifier` is the classifier as a plain module on pixels,
# and `explain_func` gives any registered method's maps.

# %%
try:
    import quantus
except ImportError:
    quantus = None
    print("Quantus is not installed: pip install --no-deps -r requirements-interop.txt")
if quantus is not None:
    from ptame.interop.quantus import PixelClassifier, explain_func, numpy2_aliases

    pixel_model = PixelClassifier(backbone, explainer).eval()
    x, y = images.numpy(), classes.numpy()
    s = masks[:, None].float().numpy()
    found = {}
    np.random.seed(0)  # Quantus draws its random subsets from numpy's global generator
    for key in ("ptame", "gradcam"):
        a = explain_func(pixel_model, x, y, method=key)
        with numpy2_aliases():
            hits = quantus.PointingGame(disable_warnings=True)(
                model=pixel_model, x_batch=x, y_batch=y, a_batch=a, s_batch=s
            )
            correlation = quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=1024, disable_warnings=True)(
                model=pixel_model, x_batch=x, y_batch=y, a_batch=a, device="cpu"
            )
        found[METHODS[key].name] = {
            "Quantus pointing game (%)": 100 * sum(hits) / len(hits),
            "Quantus faithfulness correlation": float(correlation[0]),
        }
    display(pd.DataFrame(found).T.round(3))

# %% [markdown]
# ## 4. An explainer for a classifier of your own
#
# All P-TAME needs is a classifier that maps normalised images to logits, its normalisation, and
# a folder of the kind of images it sees: no labels. Here "your" classifier is the shapes
# classifier taken as a plain `nn.Module` (any PyTorch model works the same way), and the folder
# holds 1200 unlabelled shapes images that the demo's networks never saw, written by the same code
# as `python -m train images`. The explainer's auxiliary network is the demo's small ResNet
# (for photographs, the default ImageNet ResNet-18).

# %%
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from ptame import PTAME, TrainSettings, train_explainer
from train.commands.images import write_images

folder = OUT / "images"
if not any(folder.glob("*.png")):
    write_images(folder, "shapes", "train", count=1200, start=300_000, progress=False)


class ImageFolder(Dataset):
    """Every PNG of a folder as (3, H, W) pixels in [0, 1]."""

    def __init__(self, root: Path) -> None:
        self.files = sorted(root.glob("*.png"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return TF.to_dtype(TF.to_image(Image.open(self.files[index]).convert("RGB")), torch.float32, scale=True)


my_classifier = backbone.model  # normalised (B, 3, 128, 128) -> (B, 6) logits
my_mean, my_std = backbone.preprocessing.mean, backbone.preprocessing.std
my_explainer = PTAME(
    num_classes=6,
    auxiliary=f"local-dir:{ROOT / 'checkpoints' / 'shapes' / 'auxiliary'}",
    auxiliary_mean=SHAPES_MEAN,
    auxiliary_std=SHAPES_STD,
    class_names=list(SHAPE_CLASSES),
)
loader = DataLoader(ImageFolder(folder), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
steps = int(os.environ.get("TUTORIAL_STEPS", "100"))
batches = (batch for _ in range(-(-steps // len(loader))) for batch in loader)
start = time.perf_counter()
records = train_explainer(
    my_classifier, my_explainer, batches, my_mean, my_std, TrainSettings(), total_steps=steps, progress=False
)
print(f"{steps} steps of 32 images in {time.perf_counter() - start:.0f} s; last loss {records[-1]['loss']:.3f}")
my_explainer.eval().save_pretrained(OUT / "my-explainer")  # PTAME.from_pretrained(OUT / "my-explainer")

# %% [markdown]
# How good is it after a minute's training? The same figures on the six test images, against
# Grad-CAM and the demo's explainer (800 steps on 4000 images):

# %%
comparison = {}
for name, saliency in (
    ("P-TAME, trained here", my_explainer.explain(images, classes).detach()),
    ("P-TAME, the demo's", explainer.explain(images, classes).detach()),
    ("Grad-CAM", METHODS["gradcam"](backbone, images, classes)),
):
    comparison[name] = score_maps(backbone, images, saliency, classes, masks, deletion_steps=16)
columns = ["ad_100", "ic_100", "ad_50", "deletion_auc", "insertion_auc", "pointing_game"]
display(pd.DataFrame(comparison).T.round(3)[columns])
print(f"the tutorial ran in {time.perf_counter() - started:.0f} s")
