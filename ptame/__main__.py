"""``python -m ptame explain ...``: see ``ptame.cli``."""

import sys

from ptame.cli import main

if __name__ == "__main__":
    sys.exit(main())
