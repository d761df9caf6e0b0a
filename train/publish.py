"""Publish a trained explainer to the Hugging Face Hub, with its model card and manifest entry.

    python -m train publish runs/resnet50 --repo-id ORG/ptame-resnet50 [--dry-run]

Writes RUN/publish/ (config.json, model.safetensors, README.md: the model card with the
classifier and its exact weights, the auxiliary network, the recipe, RUN/evaluation.md and
RUN/verdict.md if present, the license and a usage snippet; its metadata, written with
huggingface_hub's ModelCardData: base_model, library_name, datasets, and P-TAME's figures of
RUN/evaluation.csv and RUN/verdict.csv as the model-index), pushes it with huggingface_hub (token: --token, or
HF_TOKEN / the stored login), and prints the [[models]] table to add to
checkpoints/manifest.toml, pinned to the pushed commit. --dry-run writes the folder only.
"""

import argparse
import csv
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx2
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_session
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError, safe_open

from ptame.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from ptame.errors import PublishError
from ptame.files import replace_folder
from ptame.methods import explainer_method
from train.recipes import LOSS_FLAGS, RECIPE_FLAGS
from train.runs import BACKBONE_DISPLAY_NAMES, EVALUATION_NAME, EXPLAINER_FOLDER, RUN_NAME, manifest_entry
from train.verdict import VERDICT_CSV_NAME, VERDICT_NAME

CARD_NAME = "README.md"
EVALUATION_CSV_NAME = "evaluation.csv"  # written by python -m train evaluate --out RUN, beside evaluation.md
PUBLISH_FOLDER = "publish"
UPLOAD_TIMEOUT_S = 60.0  # per Hub request of an upload (ptame.hub.HUB_TIMEOUT_S: downloads)
CITATION = """\
@article{ntrougkas2025ptame,
  title   = {P-TAME: Explain Any Image Classifier with Trained Perturbations},
  author  = {Ntrougkas, Mariano V. and Mezaris, Vasileios and Patras, Ioannis},
  journal = {IEEE Open Journal of Signal Processing},
  year    = {2025},
  doi     = {10.1109/OJSP.2025.3568756},
  note    = {arXiv:2501.17813}
}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("run_dir", type=Path, help="a finished run folder of python -m train explainer or imagenet")
    parser.add_argument("--repo-id", required=True, help="Hub model repo, ORG/NAME")
    parser.add_argument("--dry-run", action="store_true", help="write the folder, push nothing")
    parser.add_argument("--folder", type=Path, help=f"where to write the repo's files (default RUN/{PUBLISH_FOLDER})")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--license", default="apache-2.0", help="license of the head's weights (model card)")
    parser.add_argument("--key", help="manifest key (default: the run folder's name)")
    parser.add_argument("--display-name", help="name in the app's model selector")
    parser.add_argument("--timeout", type=float, default=UPLOAD_TIMEOUT_S, help="seconds per Hub request")


def read_run(run_dir: Path) -> dict[str, object]:
    """The run's configuration (run.json), after checking that its explainer files are readable.

    Raises:
        PublishError: not a finished run, or unreadable files.
    """
    config_path = run_dir / RUN_NAME
    explainer = run_dir / EXPLAINER_FOLDER
    if not config_path.is_file() or not (explainer / WEIGHTS_NAME).is_file() or not (explainer / CONFIG_NAME).is_file():
        raise PublishError(
            f"{run_dir} is not a finished training run: it needs {RUN_NAME} and {EXPLAINER_FOLDER}/ "
            f"({CONFIG_NAME}, {WEIGHTS_NAME}); train it to the end (or --resume it) first"
        )
    try:
        with safe_open(str(explainer / WEIGHTS_NAME), framework="pt"):
            pass
        json.loads((explainer / CONFIG_NAME).read_text(encoding="utf-8"))
        return json.loads(config_path.read_text(encoding="utf-8"))
    except (SafetensorError, OSError, ValueError) as error:
        raise PublishError(f"cannot read the run in {run_dir}: {error}") from error


def reproduce_command(run: dict[str, object]) -> str:
    """The command line that trains this run again (recipe flags as given; data and output generic)."""
    arguments = run["arguments"]
    command = run["command"]
    classifier_flag = "--backbone" if command == "imagenet" else "--classifier"
    words = [f"python -m train {command}", f"{classifier_flag} {run['classifier']}", "--data DIR", "--out runs/NAME"]
    if not run["pretrained"]:
        words.append("--no-pretrained")
    for name in (*RECIPE_FLAGS, *LOSS_FLAGS, "feature_levels", "image_size", "steps", "held_out"):
        value = arguments.get(name)
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            words.append(f"{flag} {' '.join(map(str, value))}")
        elif value is not None:
            words.append(f"{flag} {value}")
    return " ".join(words)


# The figures of evaluation.csv / verdict.csv written into the card's model-index: column -> name.
# AD and the areas of deletion and ROAD MoRF are better lower; the rest higher.
RESULT_NAMES = {
    "ad_100": "Average Drop, 100% kept (%, lower is better)",
    "ic_100": "Increase in Confidence, 100% kept (%)",
    "ad_50": "Average Drop, 50% kept (%, lower is better)",
    "ic_50": "Increase in Confidence, 50% kept (%)",
    "ad_15": "Average Drop, 15% kept (%, lower is better)",
    "ic_15": "Increase in Confidence, 15% kept (%)",
    "road_morf_auc": "ROAD, most relevant first (area, lower is better)",
    "road_lerf_auc": "ROAD, least relevant first (area)",
    "deletion_auc": "Deletion (area, lower is better)",
    "insertion_auc": "Insertion (area)",
    "pointing_game": "Pointing game (%)",
    "energy_pointing_game": "Energy-based pointing game",
}
IMAGENET_DATASET = "ILSVRC/imagenet-1k"  # the Hub's ImageNet-1k dataset
CARD_TEMPLATE = """---
{{ card_data }}
---

# P-TAME explainer for {{ name }}

A [P-TAME](https://arxiv.org/abs/2501.17813) attention head that explains the classifier below:
one forward pass gives a saliency map for every class. The classifier is a black box: only its
logits were used in training, and no labels.
{% if not pretrained %}
**Trained against randomly initialised networks: a test artefact.**
{% endif %}
- **Classifier**: `{{ classifier }}` (`ptame.create_backbone({{ classifier_literal }})`), weights: {{ weights }}.
  The explainer is trained for exactly these weights; do not use it with others.
- **Auxiliary network**: `{{ auxiliary }}`, feature levels {{ feature_levels }} (frozen, named in
  config.json, loaded by timm; not stored here).
- **Files**: `config.json` (class count, auxiliary network, class names), `model.safetensors`
  (the head's weights).

## Usage

```python
import torch
from PIL import Image

from ptame import PTAME, create_backbone

backbone = create_backbone({{ classifier_literal }})  # the classifier this explainer was trained for
explainer = PTAME.from_pretrained({{ repo_literal }})  # pin revision=COMMIT for reproducibility
pixels = backbone.preprocessing.transform()(Image.open("photo.jpg").convert("RGB")).unsqueeze(0)
with torch.no_grad():
    top1 = backbone.logits(pixels).argmax(dim=1)
    saliency = explainer.explain(pixels, top1)  # (1, H, W) in [0, 1]
```

## Training

| setting | value |
|---|---|
{% for key, value in recipe_rows -%}
| {{ key }} | {{ value }} |
{% endfor %}
Reproduce with `{{ command }}`.

## Evaluation

{{ evaluation }}

## License

The head's weights: {{ license }}. The classifier's and auxiliary network's weights keep their
own licenses; ImageNet's terms of access apply to anything trained on it.

## Citation

```bibtex
{{ citation }}
```
"""


def base_model(run: dict[str, object]) -> str | None:
    """The Hub id of the classifier's weights: ``timm/ARCH.TAG`` for timm's pretrained weights,
    ``ORG/NAME`` for an ``hf-hub:`` classifier; None for random, local or non-Hub weights."""
    classifier = str(run["classifier"])
    if not run["pretrained"]:
        return None
    if classifier.startswith("hf-hub:"):
        return classifier.removeprefix("hf-hub:").partition("@")[0]
    if run.get("timm_weights") and not classifier.startswith("local-dir:"):
        return f"timm/{run['timm_weights']}"
    return None


def eval_results(results: Sequence[tuple[Mapping[str, str], Sequence[Mapping[str, object]]]]) -> list[EvalResult]:
    """P-TAME's figures of evaluation tables as model-index entries.

    Args:
        results: (dataset, rows) pairs: dataset with "type", "name" and "split"; rows as
            evaluation.csv's (a "method" column, one column per figure); only the explainer
            method's row (``ptame.methods.explainer_method``) and its figures of ``RESULT_NAMES`` are taken.
    """
    entries = []
    for dataset, rows in results:
        for row in rows:
            if row.get("method") != explainer_method().key:
                continue
            for column, name in RESULT_NAMES.items():
                if row.get(column) in (None, ""):
                    continue
                entries.append(
                    EvalResult(
                        task_type="image-classification",
                        task_name="Explaining the classifier's predictions (saliency maps)",
                        dataset_type=dataset["type"],
                        dataset_name=dataset["name"],
                        dataset_split=dataset["split"],
                        metric_type=column,
                        metric_name=name,
                        metric_value=round(float(row[column]), 6),
                    )
                )
    return entries


def card(
    run: dict[str, object],
    repo_id: str,
    license_name: str,
    evaluation: str | None,
    results: Sequence[tuple[Mapping[str, str], Sequence[Mapping[str, object]]]] = (),
) -> ModelCard:
    """The model card of a finished run: huggingface_hub's ModelCard, its metadata a ModelCardData.

    Args:
        run: the run's run.json.
        repo_id: where the explainer is (or will be) published, for the usage snippet.
        license_name: the head's weights' license.
        evaluation: Markdown of the evaluation and verdict reports, or None.
        results: (dataset, rows) pairs of evaluation tables for the model-index (``eval_results``).

    Returns:
        The card: metadata (library_name, license, base_model, datasets, tags, model-index with
        P-TAME's evaluation figures) and the text (the classifier and its exact weights, the
        auxiliary network, usage, the recipe, the evaluation, license, citation).
    """
    recipe = run["recipe"]
    backbone = run["classifier"]
    name = BACKBONE_DISPLAY_NAMES.get(backbone, backbone)
    weights = recipe["classifier_weights"] if run["pretrained"] else "RANDOM initialisation (a test run)"
    if run["pretrained"] and run.get("timm_weights"):
        weights += f" (timm `{run['timm_weights']}`)"
    recipe_rows = [
        ("optimiser", f"AdamW (amsgrad), lr {recipe['lr']}, weight decay {recipe['weight_decay']}"),
        ("schedule", "OneCycle stepped per batch, max_lr = lr"),
        ("loss", ", ".join(f"{key} {value}" for key, value in recipe["loss"].items())),
        ("global batch", recipe["batch_size"]),
        ("steps", f"{run['total_steps']} ({recipe['epochs']} epoch(s) of {run['num_images']} images)"),
        ("train transform", f"Resize {run['transform']['resize']}, RandomCrop {run['transform']['crop']}, flip"),
        ("precision", "bf16 autocast" if recipe["amp"] else "fp32"),
        ("seed", recipe["seed"]),
        ("processes", run.get("world_size", 1)),
        ("source", recipe["source"]),
        ("versions", ", ".join(f"{key} {value}" for key, value in run.get("versions", {}).items())),
    ]
    model_name = f"P-TAME explainer for {name}"
    results_metadata = eval_results(results)
    data = ModelCardData(
        library_name="ptame",
        license=license_name,
        base_model=base_model(run),
        datasets=[IMAGENET_DATASET] if run["command"] == "imagenet" else None,
        tags=["explainability", "saliency", "p-tame", "image-classification"],
        model_name=model_name if results_metadata else None,  # the model-index's name
        eval_results=results_metadata or None,
    )
    return ModelCard.from_template(
        data,
        template_str=CARD_TEMPLATE,
        name=name,
        pretrained=run["pretrained"],
        classifier=backbone,
        weights=weights,
        auxiliary=recipe["auxiliary"],
        feature_levels=recipe["feature_levels"],
        classifier_literal=repr(backbone),
        repo_literal=repr(repo_id),
        recipe_rows=recipe_rows,
        command=reproduce_command(run),
        evaluation=evaluation.strip()
        if evaluation
        else "Not evaluated yet (`python -m train evaluate` writes evaluation.md).",
        license=license_name,
        citation=CITATION,
    )


def model_card(
    run: dict[str, object],
    repo_id: str,
    license_name: str,
    evaluation: str | None,
    results: Sequence[tuple[Mapping[str, str], Sequence[Mapping[str, object]]]] = (),
) -> str:
    """The model card (README.md with Hub metadata) of a finished run, as text (see ``card``)."""
    return str(card(run, repo_id, license_name, evaluation, results))


def read_results(run_dir: Path, run: dict[str, object]) -> list[tuple[dict[str, str], list[dict[str, str]]]]:
    """The run's evaluation tables for the card's model-index: RUN/evaluation.csv (``python -m train
    evaluate --out RUN``; ImageNet val's test subset for an ImageNet run) and RUN/verdict.csv (the
    held-out images of the training folder), each with its dataset, where present."""
    imagenet = run["command"] == "imagenet"
    sources = [
        (
            run_dir / EVALUATION_CSV_NAME,
            {
                "type": IMAGENET_DATASET if imagenet else "imagefolder",
                "name": "ImageNet val, the P-TAME paper's 2000-image test subset"
                if imagenet
                else "the evaluation images of evaluation.md",
                "split": "validation" if imagenet else "test",
            },
        ),
        (
            run_dir / VERDICT_CSV_NAME,
            {"type": "imagefolder", "name": "held-out images of the training folder", "split": "held-out"},
        ),
    ]
    results = []
    for path, dataset in sources:
        if path.is_file():
            with path.open(encoding="utf-8", newline="") as file:
                results.append((dataset, list(csv.DictReader(file))))
    return results


def write_folder(run_dir: Path, folder: Path, card: str) -> None:
    """Write the repo's files into a temporary sibling folder, then swap it in for ``folder``
    (``ptame.files.replace_folder``): ``folder`` is never half-written."""
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copyfile(run_dir / EXPLAINER_FOLDER / name, staging / name)
    (staging / CARD_NAME).write_text(card, encoding="utf-8")
    replace_folder(staging, folder)


def push(folder: Path, repo_id: str, token: str | None, private: bool, timeout: float) -> str:
    """Create the repo if needed and upload the folder as one commit.

    Returns:
        The commit's hash (pin it in the manifest).

    Raises:
        PublishError: refused (token, permissions) or unreachable Hub.
    """
    get_session().timeout = timeout  # huggingface_hub's shared HTTP session waits forever by default
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, repo_type="model", folder_path=folder, commit_message="Upload P-TAME explainer"
        )
    except HfHubHTTPError as error:
        raise PublishError(f"the Hub refused the upload to {repo_id} (token and permissions?): {error}") from error
    except (httpx2.HTTPError, OSError) as error:
        raise PublishError(
            f"cannot reach the Hub to push {repo_id} (network down, HF_HUB_OFFLINE set, or no answer within "
            f"{timeout:.0f} s): {error}"
        ) from error
    return commit.oid


def run(args: argparse.Namespace) -> None:
    """Write the folder, push it unless --dry-run, print the manifest entry."""
    try:
        publish(args)
    except PublishError as error:
        raise SystemExit(f"publish: {error}") from error


def publish(args: argparse.Namespace) -> None:
    """The command's work; PublishError on failure."""
    run_dir: Path = args.run_dir
    try:
        validate_repo_id(args.repo_id)
    except HFValidationError as error:
        raise PublishError(f"--repo-id {args.repo_id!r} is not a valid Hub repo id (ORG/NAME): {error}") from error
    run_config = read_run(run_dir)
    if not run_config["pretrained"] and not args.dry_run:
        raise PublishError(f"{run_dir} was trained against random weights (--no-pretrained): not pushing it")
    reports = [run_dir / EVALUATION_NAME, run_dir / VERDICT_NAME]
    evaluation = "\n".join(path.read_text(encoding="utf-8") for path in reports if path.is_file()) or None
    folder = args.folder or run_dir / PUBLISH_FOLDER
    card_text = model_card(run_config, args.repo_id, args.license, evaluation, read_results(run_dir, run_config))
    write_folder(run_dir, folder, card_text)
    print(f"wrote {folder}", file=sys.stderr)
    revision = None
    if not args.dry_run:
        revision = push(folder, args.repo_id, args.token, args.private, args.timeout)
        print(f"pushed {folder} to https://huggingface.co/{args.repo_id} at commit {revision}", file=sys.stderr)
    backbone = run_config["classifier"]
    print("# add to checkpoints/manifest.toml:", file=sys.stderr)
    print(
        manifest_entry(
            key=args.key or run_dir.resolve().name,
            display_name=args.display_name or BACKBONE_DISPLAY_NAMES.get(backbone, backbone),
            classifier=backbone,
            explainer=args.repo_id,
            revision=revision,
        )
    )
