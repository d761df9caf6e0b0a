"""The model cards (README.md) of a generated world's networks and explainer (``python -m train world``)."""

from ptame.datasets.world import World

AD_IC_PERCENTS = (100, 50, 15)  # the method doc's AD/IC at 100%, 50%, 15%

# A network's sentence in its card, for a world whose recipe has no roles of its own (formatted
# with the world's name and its recipe's fields).
GENERIC_ROLES = {
    "classifier": "The {name} classifier. Besides the images themselves, it learnt from masked views of "
    "{masked_share:.0%} of them (the object kept, the rest partly black), from "
    "{cutout_share:.0%} of them again with the object cut out and from an all-black image, "
    "both with a uniform target, so that it reads the masked images that perturbation methods show it.",
    "auxiliary": "The auxiliary network of a {name} explainer: a feature extractor (layers 1-4), "
    "trained as a classifier.",
}


def command(world: World) -> str:
    """The command line that trains ``world``, as its cards say."""
    return world.recipe.command or f"python -m train world --world {world.name}"


def network_card(world: World, part: str, metrics: dict) -> str:
    """The model card of a world's "classifier" or "auxiliary" network, with its ``metrics``."""
    recipe = world.recipe
    role = (recipe.roles or GENERIC_ROLES)[part].format(name=world.name, **vars(recipe))
    size = f"{world.image_size}x{world.image_size}"
    return f"""---
library_name: timm
tags: [image-classification, synthetic, ptame]
---
# {world.name.capitalize()} {part}: `{metrics["architecture"]}`, trained from scratch

{role} Trained by `{command(world)}` on
{metrics["train_images"]} generated images of the {world.name} world (`{world.module}`, {size},
classes: {", ".join(world.classes)}); random initialisation, no pretrained weights.

| test images | test accuracy |
|---|---|
| {metrics["test_images"]} | {metrics["test_accuracy"]:.4f} |

Load with `ptame.create_backbone("local-dir:PATH")` or `timm.create_model("local-dir:PATH", pretrained=True)`.
"""


def explainer_card(world: World, metrics: dict) -> str:
    """The model card (README.md) of a world's P-TAME explainer, with its figures ``metrics``."""
    recipe = world.recipe
    loss = recipe.explainer.loss
    columns = [
        "pointing_game",
        "energy_pointing_game",
        *(f"{kind}_{f}" for f in AD_IC_PERCENTS for kind in ("ad", "ic")),
    ]
    table = "\n".join(
        [" | ".join(columns), " | ".join("---" for _ in columns), " | ".join(f"{metrics[key]:g}" for key in columns)]
    )
    return f"""---
library_name: ptame
tags: [explainability, saliency, p-tame, synthetic]
---
# P-TAME explainer of the {world.name} classifier

A P-TAME attention head (arXiv 2501.17813) on the features of `../auxiliary`, trained by
`{command(world)}` against `../classifier` as a black box (its predictions only) on
{metrics["train_images"]} generated images. Load with `ptame.PTAME.from_pretrained(PATH)`.

Training: the fuser starts at zero (every map 0.5), then {recipe.explainer_steps} steps of {recipe.batch_size} images,
AdamW (amsgrad), OneCycle with max lr
{recipe.explainer.lr}, weight decay {recipe.explainer.weight_decay}; loss ce {loss.ce}, area {loss.area},
smooth {loss.smooth}, p {loss.area_power}, q {loss.smooth_power}, border {loss.border}.

On the first {metrics["test_images"]} test images, with the maps of the classifier's prediction (classifier
accuracy {metrics["classifier_accuracy"]:g}):

{table}

Pointing game: the share of maps whose maximum lies on the object's mask. Energy pointing game:
the share of the map's sum on the mask. AD / IC at 100, 50, 15% (method doc): keep the top X% of
the map with its values, multiply the image by it, and compare the class probability with the
clean image's (AD: mean relative drop, lower is better; IC: % of images whose probability rises,
higher is better).
"""
