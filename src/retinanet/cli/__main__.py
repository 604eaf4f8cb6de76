"""``python -m retinanet.cli ...`` (as torchrun needs a module): the same as ``retinanet ...``."""

import sys

from . import main

sys.exit(main())
