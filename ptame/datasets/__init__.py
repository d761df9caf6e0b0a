"""Generated datasets with ground truth: the shapes and textures worlds (``ptame.datasets.shapes``,
``ptame.datasets.textures``), each a ``WorldImages`` dataset."""
