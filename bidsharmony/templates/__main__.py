"""``python -m bidsharmony.templates DIR [--resolutions 1 2]``."""

import sys

from .cli import main

sys.exit(main())
