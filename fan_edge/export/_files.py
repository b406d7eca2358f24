"""Writing an export's files all-or-nothing.

A target writes its files (``model.onnx``; ``model.xml`` and ``model.bin``)
under their final names into a private temporary folder beside the
destination; :meth:`Staging.commit` then fsyncs them and moves them into place
with ``os.replace`` in a given order (OpenVINO: the ``.bin`` before the
``.xml`` that names it), after removing a stale sidecar so that an interrupted
commit never pairs a new artifact with an old contract. A failed or
interrupted export leaves the previous artifact as it was and no partial file
(the temporary folder is removed; one left by a killed process starts with
``.fan-export-`` and is ignored by every reader). The same principle as
:func:`fan_edge.atomic.atomic_path`, for several files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..runtime.contract import sidecar_path


class Staging:
    def __init__(self, destination: str | os.PathLike[str]) -> None:
        self.destination = Path(destination)
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=".fan-export-", dir=self.destination.parent))

    def path(self, final: str | os.PathLike[str]) -> Path:
        """Where to write the file that will become ``final``."""
        return self.folder / Path(final).name

    def commit(self, finals: list[Path]) -> None:
        """Move the staged files into place, in order (the main artifact's sidecar, if staged, goes last)."""
        for final in finals:
            staged = self.path(final)
            if not staged.is_file():
                raise FileNotFoundError(f"export did not produce {final.name}")
            with open(staged, "rb+") as fh:
                os.fsync(fh.fileno())
        stale = sidecar_path(self.destination)
        if stale.exists():  # never leave an old contract beside a new artifact, even for a moment
            stale.unlink()
        for final in finals:
            os.replace(self.path(final), final)
        try:  # make the renames durable
            fd = os.open(self.destination.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
