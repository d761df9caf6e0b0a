"""Train the textures world's networks into one folder: ``python -m train world --world textures``."""

import argparse

from train.commands import world


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m train world``, the world chosen."""
    world.add_arguments(parser, world="textures")


run = world.run
