"""The model card of a finished training run: README.md with the Hub's metadata.

``python -m train explainer`` writes it into the run's explainer/ folder and ``python -m train
publish`` into the folder it pushes (train/commands/publish.py). The card names the classifier and
its exact weights, the auxiliary network, the recipe (and the command that reproduces the run),
the evaluation and verdict reports, the license and a usage snippet; its metadata, written with
huggingface_hub's ModelCardData, holds P-TAME's figures of evaluation.csv / verdict.csv as the
model-index.
"""

from collections.abc import Mapping, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ptame.methods import explainer_method
from train.recipes import LOSS_FLAGS, RECIPE_FLAGS, command_flag
from train.runs import BACKBONE_DISPLAY_NAMES

CITATION = """\
@article{ntrougkas2025ptame,
  title   = {P-TAME: Explain Any Image Classifier with Trained Perturbations},
  author  = {Ntrougkas, Mariano V. and Mezaris, Vasileios and Patras, Ioannis},
  journal = {IEEE Open Journal of Signal Processing},
  year    = {2025},
  doi     = {10.1109/OJSP.2025.3568756},
  note    = {arXiv:2501.17813}
}"""


def reproduce_command(run: dict[str, object]) -> str:
    """The command line that trains this run again (recipe flags as given; data and output generic)."""
    arguments = run["arguments"]
    command = run["command"]
    classifier_flag = "--backbone" if command == "imagenet" else "--classifier"
    words = [f"python -m train {command}", f"{classifier_flag} {run['classifier']}", "--data DIR", "--out runs/NAME"]
    if not run["pretrained"]:
        words.append("--no-pretrained")
    for name in (*RECIPE_FLAGS, *LOSS_FLAGS, "feature_levels", "image_size", "steps", "held_out"):
        if arguments.get(name) is not None:
            words.append(command_flag(name, arguments[name]))
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
- **Auxiliary network**: `{{ auxiliary }}`, feature levels {{ feature_levels }}, fed {{ auxiliary_input }}
  (frozen, named in config.json, loaded by timm; not stored here).
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
        auxiliary_input=f"the images resized to {size} px (shorter side)"
        if (size := recipe.get("auxiliary_size"))
        else "the images at the classifier's input size",
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
