"""The commands of ``python -m train COMMAND``: one module each, listed in ``COMMANDS``.

Every command module has a one-line docstring, ``add_arguments(parser)`` and ``run(args)``. The
modules beside this folder (``train/*.py``) are the commands' helpers, none of them a command.
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
}
