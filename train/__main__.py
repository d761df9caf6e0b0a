"""python -m train COMMAND [options]: each command is a module of train/commands/ (``train.commands.COMMANDS``).

Every command module has a one-line docstring, ``add_arguments(parser)`` and ``run(args)``.
"""

import argparse
import importlib

from train.commands import COMMANDS


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, path in COMMANDS.items():
        module = importlib.import_module(path)
        summary = module.__doc__.strip().splitlines()[0]
        module.add_arguments(commands.add_parser(name, help=summary, description=module.__doc__))
        modules[name] = module
    args = parser.parse_args(argv)
    modules[args.command].run(args)


if __name__ == "__main__":
    main()
