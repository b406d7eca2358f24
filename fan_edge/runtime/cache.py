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


def in_cache(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies in the cache folder: its write errors then name the cache, which the user never chose."""
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(cache_dir()))
    except ValueError:
        return False
    return True


def cache_hint() -> str:
    """Where the cache is and how to move it, for an error about writing there."""
    return f"{cache_dir()}; set FAN_EDGE_CACHE to a writable folder"
