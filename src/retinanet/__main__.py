"""``python -m retinanet ...``: the same commands as the ``retinanet`` program."""

import sys

from .cli import main

sys.exit(main())
