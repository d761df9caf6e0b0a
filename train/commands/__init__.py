"""The commands of ``python -m train COMMAND``: one module each, listed in ``COMMANDS``.

Every command module has a one-line docstring, ``add_arguments(parser)`` and ``run(args)``. The
world commands live in this folder; the others (images, explainer, imagenet, evaluate, publish,
bench) are still modules of ``train/`` beside the helpers, and this table is what tells them apart.
"""

# command name -> its module, in the order ``python -m train --help`` lists them
COMMANDS: dict[str, str] = {
    "world": "train.commands.world",
    "shapes": "train.commands.shapes",
    "textures": "train.commands.textures",
    "images": "train.images",
    "explainer": "train.explainer",
    "imagenet": "train.imagenet",
    "evaluate": "train.evaluate",
    "publish": "train.publish",
    "bench": "train.bench",
}
