"""``python -m fan_edge.train ...`` is ``fan-train ...`` (what torchrun launches)."""

import sys

from ..cli import train_main

sys.exit(train_main())
