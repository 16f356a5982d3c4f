"""``python -m pipeline.submit``: the command line of :mod:`pipeline.inference.submit`."""

import sys

from pipeline.inference.submit import main

if __name__ == "__main__":
    sys.exit(main())
