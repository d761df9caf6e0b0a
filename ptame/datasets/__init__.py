"""Generated datasets with ground truth: the shapes world (``ptame.datasets.shapes``)."""
