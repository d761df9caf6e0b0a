"""Run a jupytext notebook script as a notebook (what CI does with the tutorial):

    python notebooks/run.py [notebooks/tutorial.py] [--out build/tutorial.ipynb] [--timeout 900]

converts the script to a notebook (jupytext), executes every cell in a fresh Python kernel of this
interpreter, from the repository's root (nbclient), writes the executed notebook, and fails with
the cell's error if a cell fails. Needs requirements-docs.txt.
"""

import argparse
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("script", type=Path, nargs="?", default=ROOT / "notebooks" / "tutorial.py")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "tutorial.ipynb", help="the executed notebook")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    notebook = jupytext.read(args.script)
    client = NotebookClient(
        notebook, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as error:
        print(f"{args.script}: a cell failed after {time.perf_counter() - start:.0f} s:\n{error}", file=sys.stderr)
        return 1
    finally:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, args.out)
    print(f"{args.script}: {len(notebook.cells)} cells ran in {time.perf_counter() - start:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
