"""Train a P-TAME explainer on ImageNet (or any image folder) with the paper's recipe.

    python -m train imagenet --backbone resnet50 --data /data/imagenet --out runs/resnet50
    torchrun --nproc-per-node 8 -m train imagenet --backbone vit_b_16 --data DIR --out runs/vit

This is ``python -m train explainer`` (train/commands/explainer.py: the same options, files and --resume)
with the classifier named by --backbone and the paper's recipes: vgg16, resnet50 and vit_b_16
get theirs (train/recipes.py), any other timm name the paper's schedule with the method's
default loss coefficients. Every image is trained on unless --held-out N keeps N out for a
verdict; evaluate on ImageNet val with ``python -m train evaluate``.
"""

import argparse

from train.commands import explainer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m train explainer``, the classifier named ``--backbone``."""
    explainer.add_arguments(parser, classifier_flag="--backbone")
    parser.set_defaults(held_out=0)


def run(args: argparse.Namespace) -> None:
    """Train with the paper's recipe (see ``train.commands.explainer.run``)."""
    explainer.run(args, command="imagenet", paper_schedule=True)
