"""Train a generated world's networks (classifier, auxiliary network, P-TAME explainer) into one folder.

``python -m train world --world NAME --out DIR`` trains the networks of any world of
``ptame.datasets.WORLDS`` that has a recipe as its recipe says (the objects world has none: its
classifier is a real ImageNet network) (``train.worlds``: the files it writes, and how);
``python -m train shapes`` and ``python -m train textures`` are the same for those two worlds.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

from ptame.datasets import WORLDS, get_world
from train.worlds import train_world


def add_arguments(parser: argparse.ArgumentParser, world: str | None = None) -> None:
    """Options of ``python -m train world`` (``world``: a world's own command, without --world)."""
    if world is None:
        trained = tuple(name for name, world in WORLDS.items() if world.recipe is not None)
        parser.add_argument(
            "--world", choices=trained, required=True, help="the generated world (one whose networks ptame trains)"
        )
    else:
        parser.set_defaults(world=world)
    parser.add_argument(
        "--out", type=Path, help="folder to write (replaced; default: the world's, e.g. checkpoints/shapes)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the model initialisations (default 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of the training process, besides one image-generating process (default 1; "
        "the same count reproduces the same weights)",
    )


def run(args: argparse.Namespace) -> None:
    """Train the world's networks into ``args.out`` and print their metrics and wall time."""
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    world = get_world(args.world)
    world = dataclasses.replace(world, recipe=dataclasses.replace(world.recipe, seed=args.seed, threads=args.threads))
    out = args.out if args.out is not None else Path(world.recipe.out or f"runs/{world.name}")
    start = time.perf_counter()
    metrics = train_world(world, out)
    minutes = (time.perf_counter() - start) / 60
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out}/{', '.join(metrics)} in {minutes:.1f} minutes")
