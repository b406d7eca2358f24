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

An artifact may be a folder (Core ML's ``.mlpackage``): it is built whole
under its final name inside the temporary folder, every file in it fsynced,
then moved in with one ``os.replace`` of the folder. An older folder of that
name is first renamed aside (``.fan-export-old-*``, in the same parent) and
removed only once the new one is in place; should the move fail, the older
one is put back. A reader sees the old complete folder, then the new
complete folder, and never a mix of the two.
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
        """Move the staged files (or folders) into place, in order (the main artifact's sidecar, if staged, goes last)."""
        for final in finals:
            staged = self.path(final)
            if staged.is_dir():
                _fsync_tree(staged)
            elif staged.is_file():
                _fsync_file(staged)
            else:
                raise FileNotFoundError(f"export did not produce {final.name}")
        stale = sidecar_path(self.destination)
        if stale.exists():  # never leave an old contract beside a new artifact, even for a moment
            stale.unlink()
        for final in finals:
            staged = self.path(final)
            if staged.is_dir() or final.is_dir():
                _replace_folder(staged, final)
            else:
                os.replace(staged, final)
        _fsync_dir(self.destination.parent)  # make the renames durable

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _fsync_tree(root: Path) -> None:
    """fsync every file of a folder, then the folders themselves (deepest first)."""
    folders = []
    for folder, _, names in os.walk(root):
        folders.append(Path(folder))
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                _fsync_file(path)
    for folder in reversed(folders):
        _fsync_dir(folder)


def _replace_folder(staged: Path, final: Path) -> None:
    """Put ``staged`` (a complete folder) at ``final``, replacing what is there only once it is in place."""
    old = None
    if final.exists() or final.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=".fan-export-old-", dir=final.parent))
        try:
            os.replace(final, aside / final.name)
        except BaseException:
            shutil.rmtree(aside, ignore_errors=True)
            raise
        old = aside / final.name
    try:
        os.replace(staged, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)  # put the older artifact back
            shutil.rmtree(old.parent, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)  # the older artifact, now aside in its private folder
