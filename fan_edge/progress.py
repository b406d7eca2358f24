"""Progress bars on stderr: one rule for every long loop (evaluation's faces, training's batches).

A bar is drawn only where someone watches it: stderr is a terminal, ``FAN_EDGE_NO_PROGRESS`` is not ``1``, the
caller's ``enabled`` is true (False off rank 0 of a ``torchrun`` job, where every rank drawing would interleave
bars, or for a library call that asked for none) and tqdm is installed (a runtime-only install has none).
Anywhere else the caller gets a :class:`NullBar`, whose every call is a no-op, so that loops never test for a bar
and a pipe or a log file never collects a bar's carriage-return frames. Torch-free; tqdm is imported only when a
bar is drawn.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol

NO_PROGRESS_ENV = "FAN_EDGE_NO_PROGRESS"


class Bar(Protocol):
    """What a loop calls on its bar (tqdm's names)."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, **values: Any) -> Any: ...

    def close(self) -> Any: ...


class NullBar:
    """The bar where none is drawn: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def on_terminal() -> bool:
    """Whether progress is shown at all: stderr is a terminal and ``FAN_EDGE_NO_PROGRESS`` is not ``1``. Also what
    decides whether fan-export announces its steps before its outputs are locked (a refusal in a pipe stays one line)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get(NO_PROGRESS_ENV) != "1"


def progress_bar(total: int, desc: str, unit: str, *, initial: int = 0, enabled: bool = True) -> Bar:
    """A bar on stderr counting ``total`` ``unit``\\ s from ``initial`` (a resumed epoch), or a :class:`NullBar` where
    none is wanted (see the module's rule). The caller closes it."""
    if not enabled or not on_terminal():
        return NullBar()
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return NullBar()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)
