"""The verdict at the end of training: P-TAME against Grad-CAM on held-out images, label-free.

Measured on images of the user's folder that training never saw, with figures that need no
labels and no masks (the method doc's AD/IC at 100/50/15%, deletion and insertion AUC); each map
explains the classifier's own prediction. Written next to the explainer as verdict.md (and in
its model card) and verdict.csv.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ptame.explainer import PTAME
from ptame.loading.backbones import Backbone
from ptame.loading.files import atomic_write_text
from ptame.methods import Method, explainer_method, get_method, reference_method
from train.evaluation import PAPER_AD_IC_PERCENTS, EvaluationSettings, evaluate, folder_batches
from train.evaluation_report import csv_text
from train.recipes import DEFAULT_RECIPE, LOSS_FLAGS, Recipe, command_flag

VERDICT_NAME = "verdict.md"
VERDICT_CSV_NAME = "verdict.csv"
# (CSV column, header, decimals, True if higher is better)
COLUMNS: tuple[tuple[str, str, int, bool], ...] = (
    *(
        column
        for percent in PAPER_AD_IC_PERCENTS
        for column in ((f"ad_{percent}", f"AD {percent}% ↓", 2, False), (f"ic_{percent}", f"IC {percent}% ↑", 1, True))
    ),
    ("deletion_auc", "Deletion ↓", 3, False),
    ("insertion_auc", "Insertion ↑", 3, True),
)
HEADLINE = ("ad_100", "ic_100", "deletion_auc", "insertion_auc")  # the figures a verdict must win
# Below this side an ImageNet-pretrained auxiliary network sees the images as thumbnails: the
# verdict's advice, when it is a loss, includes feeding it twice the size (--auxiliary-size).
SMALL_AUXILIARY_INPUT = 160


def measure_verdict(
    backbone: Backbone,
    explainer: PTAME,
    files: Sequence[Path],
    device: torch.device,
    batch_size: int = 32,
    progress: bool = True,
) -> list[dict[str, float | str]]:
    """The explainer's and the reference method's figures on held-out images (``contenders``).

    Args:
        backbone: the classifier (its evaluation preprocessing reads the files).
        explainer: the trained explainer of that classifier.
        files: the held-out image files.
        device: where to compute.
        batch_size: images per batch.
        progress: show a progress bar.

    Returns:
        One row per method (the explainer's, the reference's): method (its key), images, seconds_per_image, ad_P / ic_P
        (percent) for P in 100, 50, 15, deletion_auc and insertion_auc (in [0, 1]).
    """
    ours, theirs = contenders()
    backbone, explainer = backbone.to(device), explainer.to(device).eval()
    settings = EvaluationSettings(methods=(ours.key, theirs.key), metrics=("ad_ic", "deletion_insertion"))
    description = f"verdict: {ours.name} vs {theirs.name}"
    with tqdm(total=len(files), desc=description, unit="image", disable=not progress) as bar:
        batches = folder_batches(files, backbone, batch_size)
        rows, _ = evaluate(backbone, explainer, batches, settings, device, bar.update)
    return rows


def contenders() -> tuple[Method, Method]:
    """(the trained explainer's method, the reference it must beat), from the method registry."""
    return explainer_method(), reference_method()


def wins(rows: Sequence[dict[str, float | str]]) -> dict[str, bool]:
    """For each figure of ``COLUMNS``: whether the explainer is strictly better than the reference."""
    ours, theirs = (next(row for row in rows if row["method"] == method.key) for method in contenders())
    return {key: (ours[key] > theirs[key]) if higher else (ours[key] < theirs[key]) for key, _, _, higher in COLUMNS}


def verdict_markdown(rows: Sequence[dict[str, float | str]], tries: Sequence[str] = ()) -> str:
    """verdict.md: how it was measured, the table, and the verdict in one sentence (after a loss,
    with ``tries``: what to change, ``what_to_try``)."""
    ours, theirs = contenders()
    images = int(next(row for row in rows if row["method"] == ours.key)["images"])
    won = wins(rows)
    lines = [
        f"## Verdict: {ours.name} against {theirs.name}",
        "",
        f"On {images} held-out images of the training folder (never trained on; no labels or masks needed), "
        "each map explaining the classifier's prediction. AD / IC: the image multiplied by the top X% of the "
        "map (its soft values), the average relative drop of the class probability (lower is better) and the "
        "percentage of images whose probability rises (higher is better). Deletion / insertion: areas under "
        "the class-probability curves as the map's most salient pixels are blacked out of the image (lower is "
        "better) or inserted into its blurred copy (higher is better).",
        "",
        "| Method | " + " | ".join(header for _, header, _, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [
            f"**{row[key]:.{decimals}f}**" if won[key] == (row["method"] == ours.key) else f"{row[key]:.{decimals}f}"
            for key, _, decimals, _ in COLUMNS
        ]
        lines.append(f"| {get_method(str(row['method'])).name} | " + " | ".join(cells) + " |")
    lines += ["", verdict_sentence(won, tries), ""]
    return "\n".join(lines)


def headline_names() -> str:
    """The figures of ``HEADLINE`` as words: "AD 100%, IC 100%, Deletion and Insertion"."""
    names = [header.rstrip(" ↓↑") for key, header, _, _ in COLUMNS if key in HEADLINE]
    return ", ".join(names[:-1]) + " and " + names[-1]


def verdict_sentence(won: dict[str, bool], tries: Sequence[str] = ()) -> str:
    """The verdict: on how many figures the explainer is ahead, and whether on all of ``HEADLINE``;
    after a loss, the ``tries`` (``what_to_try``) as a list."""
    count = sum(won.values())
    ahead = "{} is ahead of {}".format(*(method.name for method in contenders()))
    if all(won[key] for key in HEADLINE):
        return f"**{ahead} on {count} of {len(won)} figures, {headline_names()} included.**"
    lost = " and ".join(header.rstrip(" ↓↑") for key, header, _, _ in COLUMNS if key in HEADLINE and not won[key])
    lines = [f"**{ahead} on {count} of {len(won)} figures, but not on {lost}.** To try, one at a time:"]
    lines += [f"- {text}" for text in tries or ("train longer (--steps, twice as many)",)]
    return "\n".join(lines)


def what_to_try(recipe: Recipe, steps: int, image_side: int) -> list[str]:
    """Concrete flag values for a run whose verdict is a loss, from what won in the experiments
    of docs/own-classifier.md (a pretrained auxiliary network on four domains it never saw).

    Args:
        recipe: the run's recipe. steps: its optimiser steps. image_side: the classifier's input side.

    Returns:
        One sentence per change, each with its flags: the default recipe's optimisation values
        where the run's differ; half the area weight; twice the steps; the auxiliary network fed
        at twice the size when it saw fewer than ``SMALL_AUXILIARY_INPUT`` pixels; another
        auxiliary network.
    """
    default = DEFAULT_RECIPE
    flags = [
        command_flag(name, getattr(default, name))
        for name in ("lr", "weight_decay", "zero_fuser_start")
        if getattr(recipe, name) != getattr(default, name)
    ]
    flags += [
        command_flag(name, getattr(default.loss, name))
        for name in LOSS_FLAGS
        if getattr(recipe.loss, name) != getattr(default.loss, name)
    ]
    tries = []
    if flags:
        tries.append(
            f"the default recipe's values, `{' '.join(flags)}`: with a pretrained auxiliary network they won all 8 "
            "figures on four synthetic domains; the paper's ImageNet schedule won 1 of 8 on one of them"
        )
    tries.append(
        f"`--area {recipe.loss.area / 2:g}` (half this run's): larger maps, for a classifier that needs more of "
        "the image kept (one never trained on masked images)"
    )
    tries.append(f"train longer: `--steps {2 * steps}` (twice this run's)")
    seen = recipe.auxiliary_size or image_side
    if seen < SMALL_AUXILIARY_INPUT:
        tries.append(
            f"`--auxiliary-size {2 * seen}`: the auxiliary network sees the images at twice the size ({seen} px now; "
            "an ImageNet network sees a small image as a thumbnail), at about 4 times its cost"
        )
    tries.append("an auxiliary network whose features fit this domain (`--auxiliary`; docs/own-classifier.md)")
    return tries


def write_verdict(folder: Path, rows: Sequence[dict[str, float | str]], tries: Sequence[str] = ()) -> str:
    """Write verdict.md and verdict.csv into ``folder``; returns verdict.md's text."""
    text = verdict_markdown(rows, tries)
    atomic_write_text(folder / VERDICT_CSV_NAME, csv_text(list(rows)))
    atomic_write_text(folder / VERDICT_NAME, text)
    return text
