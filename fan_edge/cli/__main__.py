"""``python -m fan_edge.cli``: the ``fan-edge`` command."""

import sys

from . import main

sys.exit(main())
