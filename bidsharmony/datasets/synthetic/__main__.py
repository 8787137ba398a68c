"""``python -m bidsharmony.datasets.synthetic OUT``."""

import sys

from .cli import main

sys.exit(main())
