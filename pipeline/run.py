"""``python -m pipeline.run``: the command line of :mod:`pipeline.running.cli`."""

import sys

from pipeline.running.cli import main

if __name__ == "__main__":
    sys.exit(main())
