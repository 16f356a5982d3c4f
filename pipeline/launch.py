"""``python -m pipeline.launch``: the command line of :mod:`pipeline.scaling.launch`."""

import sys

from pipeline.scaling.launch import main

if __name__ == "__main__":
    sys.exit(main())
