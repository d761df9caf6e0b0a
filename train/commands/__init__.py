"""The commands of ``python -m train COMMAND``: one module each, listed in ``COMMANDS``.

Every command module has a one-line docstring, ``add_arguments(parser)`` and ``run(args)``. Every
command lives in this folder; the rest of ``train/`` is the helpers they share (data, worlds,
evaluation, cards, runs, ...), which import no command.
"""

# command name -> its module, in the order ``python -m train --help`` lists them
COMMANDS: dict[str, str] = {
    "world": "train.commands.world",
    "shapes": "train.commands.shapes",
    "textures": "train.commands.textures",
    "images": "train.commands.images",
    "explainer": "train.commands.explainer",
    "imagenet": "train.commands.imagenet",
    "evaluate": "train.commands.evaluate",
    "publish": "train.commands.publish",
    "bench": "train.commands.bench",
}
