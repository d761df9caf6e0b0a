"""``python -m ptame.bench``: the explainer-overhead benchmark, ``python -m ptame.bench.overhead``."""

from ptame.bench.overhead import main

if __name__ == "__main__":
    main()
