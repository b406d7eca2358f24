"""Command-line entry points: ``fan-edge`` (info, models, eval, predict, label, check, soak, bundle) and the per-task
commands ``fan-train``, ``fan-distill``, ``fan-export``, ``fan-prune``, ``fan-profile``, ``fan-bench``, ``fan-quantize``.

One thin module per command: it parses the arguments, calls the library, prints. :mod:`.common` holds what they
share: errors a user can cause are ``FanEdgeError``s and print as one line with a non-zero exit; ``--debug`` shows
the traceback instead. Importing this package imports neither torch nor any backend.
"""

from __future__ import annotations

from .bench import bench_main
from .edge import build_parser, main
from .export import export_main
from .profile import profile_main
from .prune import prune_main
from .quantize import quantize_main
from .train import distill_main, train_main

__all__ = ["bench_main", "build_parser", "distill_main", "export_main", "main", "profile_main", "prune_main", "quantize_main",
           "train_main"]
