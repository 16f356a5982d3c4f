"""``python -m pipeline.predict``: the command line of :mod:`pipeline.inference.predict` (this module only keeps the entry point)."""

import sys

from pipeline.inference.predict import main

if __name__ == "__main__":
    sys.exit(main())
