"""Where fan-edge keeps what it can rebuild: artifacts exported for ``fan-edge predict``, TensorRT engines.

``$FAN_EDGE_CACHE`` when set, else ``$XDG_CACHE_HOME/fan-edge``, else
``~/.cache/fan-edge``. Everything in it may be deleted at any time; it is made
again on the next use.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache folder (or a sub-folder of it), not created."""
    root = os.environ.get("FAN_EDGE_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fan-edge"
    return base.joinpath(*parts)
