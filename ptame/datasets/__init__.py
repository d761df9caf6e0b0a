"""Generated datasets with ground truth: each world is one ``World`` record (``ptame.datasets.world``),
registered in ``WORLDS`` by its module: the shapes world (``ptame.datasets.shapes``), the
textures world (``ptame.datasets.textures``) and the objects world of real photographs
(``ptame.datasets.objects``)."""

from ptame.datasets import shapes, textures, objects  # noqa: F401, I001 (registers the worlds, in this order)
from ptame.datasets.world import WORLDS, World, WorldImages, WorldRecipe, WorldSample, get_world, register_world

__all__ = ["WORLDS", "World", "WorldImages", "WorldRecipe", "WorldSample", "get_world", "register_world"]
