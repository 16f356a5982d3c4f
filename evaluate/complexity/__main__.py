"""``python -m evaluate.complexity``: see :mod:`evaluate.complexity.cli`."""

import sys

from evaluate.complexity.cli import main

sys.exit(main())
