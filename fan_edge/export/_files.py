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

A process killed with SIGKILL runs no clean-up, so its temporary folders stay
behind. Their names carry the writer's pid (``.fan-export-<pid>-<random>``,
``.fan-export-old-<pid>-<random>``) and every new :class:`Staging` first runs
:func:`recover_exports` on its folder, which settles those of dead writers
(a live writer's are left alone; see :mod:`fan_edge.atomic` for the pid
test). Several renames cannot be one atomic step, so a commit first writes a
journal (the final names, in order) into its folder once every staged file is
complete and fsynced; a killed commit is then finished by the recovery
(roll-forward: the remaining staged files are moved in, in order, the stale
sidecar removed first), and a folder without a journal (killed before the
commit) is only deleted. An older Core ML folder renamed aside is put back if
nothing took its place. After the next export into the folder, then, every
file is either the previous version or the complete new one, never a mix of
the two (a ``.bin`` of one export with the ``.xml`` of another) and never a
temporary.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..atomic import pid_alive, write_text_atomic
from ..runtime.contract import sidecar_path

# .fan-export-<pid>-<random> (a staging folder) and .fan-export-old-<pid>-<random> (an older folder artifact set aside).
TEMP_FOLDER = re.compile(r"^\.fan-export-(?P<old>old-)?(?P<pid>[1-9][0-9]*)-[a-z0-9_]{8}$")
JOURNAL = ".fan-export-commit.json"  # in a staging folder: the commit began; every staged file is complete


class Staging:
    def __init__(self, destination: str | os.PathLike[str]) -> None:
        self.destination = Path(destination)
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        recover_exports(self.destination.parent)
        self.folder = Path(tempfile.mkdtemp(prefix=f".fan-export-{os.getpid()}-", dir=self.destination.parent))

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
            if Path(os.path.abspath(final.parent)) != Path(os.path.abspath(self.destination.parent)):
                raise ValueError(f"{final} is not in {self.destination.parent}: a commit moves files within one folder")
        # From here on the staged files are complete: a kill is finished by recover_exports, not undone.
        journal = {"destination": self.destination.name, "finals": [f.name for f in finals]}
        write_text_atomic(self.folder / JOURNAL, json.dumps(journal))
        _fsync_dir(self.folder)
        _move_in(self.folder, self.destination, finals)
        _fsync_dir(self.destination.parent)  # make the renames durable

    def cleanup(self) -> None:
        # The journal goes first: a kill halfway through the removal must not leave a journal over a partial set.
        with contextlib.suppress(FileNotFoundError):
            (self.folder / JOURNAL).unlink()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _move_in(folder: Path, destination: Path, finals: list[Path]) -> None:
    """Move what is still staged in ``folder`` to ``finals``, in order; idempotent, so a recovery can finish it."""
    pending = [f for f in finals if (folder / f.name).exists() or (folder / f.name).is_symlink()]
    if not pending:
        return
    stale = sidecar_path(destination)
    # Never leave an old contract beside a new artifact, even for a moment (a sidecar already moved in is the new one).
    if (stale.exists() or stale.is_symlink()) and (stale not in finals or stale in pending):
        stale.unlink()
    for final in pending:
        staged = folder / final.name
        if staged.is_dir() or final.is_dir():
            _replace_folder(staged, final)
        else:
            os.replace(staged, final)


def _dead_temporaries(folder: Path) -> tuple[list[Path], list[Path]]:
    """The staging folders and set-aside folders in ``folder`` whose writer is no longer alive, oldest first."""
    staging, aside = [], []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return staging, aside
    for entry in entries:
        match = TEMP_FOLDER.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        (aside if match["old"] else staging).append(Path(entry.path))
    return sorted(staging, key=_mtime), sorted(aside, key=_mtime)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_journal(staging: Path) -> tuple[Path, list[Path]] | None:
    """(destination, finals) of a staging folder whose commit began, else None (also for a journal naming anything but
    plain file names: a recovery never moves a file out of the folder it settles)."""
    try:
        data = json.loads((staging / JOURNAL).read_text())
        names = [data["destination"], *data["finals"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(n, str) and n not in ("", ".", "..") and Path(n).name == n for n in names):
        return None
    parent = staging.parent
    return parent / names[0], [parent / n for n in names[1:]]


def recover_exports(folder: str | os.PathLike[str]) -> list[Path]:
    """Settle what exports killed while writing into ``folder`` left behind; return the temporary folders removed.

    A staging folder with a journal is rolled forward (its commit had begun: every staged file is complete), one
    without is deleted; a set-aside older folder artifact is put back where nothing replaced it, else deleted. A
    folder whose roll-forward fails (e.g. permissions) is kept, since it may hold the only copy of a new file.
    """
    root = Path(folder)
    staging, aside = _dead_temporaries(root)
    removed = []
    for tmp in staging:
        journal = _read_journal(tmp)
        if journal is not None:
            try:
                _move_in(tmp, *journal)
            except OSError:
                continue
            with contextlib.suppress(FileNotFoundError):
                (tmp / JOURNAL).unlink()
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    for tmp in aside:
        try:
            for entry in list(tmp.iterdir()):
                target = root / entry.name
                if not (target.exists() or target.is_symlink()):
                    os.replace(entry, target)  # the move of the new folder never happened: the older one goes back
        except OSError:
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


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
        aside = Path(tempfile.mkdtemp(prefix=f".fan-export-old-{os.getpid()}-", dir=final.parent))
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
