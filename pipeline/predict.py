"""``python -m pipeline.predict``: the command line of :mod:`pipeline.inference.predict`."""

import sys

from pipeline.inference.predict import main

if __name__ == "__main__":
    sys.exit(main())
