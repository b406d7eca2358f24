"""Writing an export's files all-or-nothing, one writer at a time, replacing only what fan-edge wrote.

A target writes its files (``model.onnx``; ``model.xml`` and ``model.bin``)
under their final names into a private staging folder (a temporary of
:mod:`fan_edge.atomic`, in ``.fan-edge-tmp/`` beside the destination, with an
owner record); the exporter writes the sidecar there too, verifies the staged
files, and :meth:`Staging.commit` then fsyncs them and moves them into place
with ``os.replace`` in a given order (OpenVINO: the ``.bin`` before the
``.xml`` that names it; the sidecar last), after removing a stale sidecar so
that an interrupted commit never pairs a new artifact with an old contract. A
failed or interrupted export leaves the previous artifact as it was and no
partial file.

One writer per output: :func:`fan_edge.atomic.output_lock` is held by
``export_model`` on each output from before the model is loaded until its
commit is done; a second ``fan-export`` to the same output is refused in one
line. Two runs once interleaved: the artifact of one and the sidecar of the
other were left together, and the first run then verified the second's
artifact (README.md, Reliability).

An artifact may be a folder (Core ML's ``.mlpackage``): it is built whole
inside the staging folder, every file in it fsynced, then moved in with one
``os.replace`` of the folder. An older folder of that name is first moved
aside (into a temporary of role ``export-old``) and removed only once the new
one is in place; should the move fail, the older one is put back. A folder is
replaced only when fan-edge provably wrote it (:func:`fan_edge_package`: a
package whose model spec holds fan-edge's contract): a user's folder that
merely has the artifact's name (``X.onnx/``, ``X.mlpackage/``) is refused, a
file target never replaces a folder, and a folder target never a file.

A process killed with SIGKILL runs no clean-up, so its staging folders stay
behind; every new :class:`Staging` first runs :func:`recover_exports` on its
folder, which settles those of dead writers (proven fan-edge's by their owner
records; a live writer's are left alone). Several renames cannot be one
atomic step, so a commit first writes a journal (the final names, in order)
into its staging folder once every staged file is complete and fsynced; a
killed commit is then finished by the recovery (roll-forward: the remaining
staged files are moved in, in order, the stale sidecar removed first), and a
staging folder without a journal (killed before the commit) is only deleted.
An older Core ML folder moved aside is put back if nothing took its place.
After the next export into the folder, every file is either the previous
version or the complete new one, never a mix of the two and never a
temporary.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..atomic import dead_temporaries, make_temporary, release_temporary, remove_stale_temporaries
from ..errors import ContractError, ExportError, FanEdgeError
from ..runtime.contract import METADATA_KEY, ModelContract, sidecar_path

EXPORT_ROLE = "export"  # a staging folder (its owner record's role)
ASIDE_ROLE = "export-old"  # an older folder artifact moved aside during a commit
JOURNAL = ".fan-export-commit.json"  # in a staging folder: the commit began; every staged file is complete
MAX_MANIFEST_BYTES = 1 << 20
MAX_SPEC_BYTES = 256 << 20  # an ML program's model.mlmodel holds the program, not the weights: a few MB at most


class Staging:
    """A private folder for one export's files, committed into ``destination``'s folder as a unit."""

    def __init__(self, destination: str | os.PathLike[str]) -> None:
        self.destination = Path(destination)
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        recover_exports(self.destination.parent)
        self.folder = make_temporary(self.destination.parent, self.destination.name, role=EXPORT_ROLE, directory=True)

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
            check_replaceable(final, folder=staged.is_dir())
        check_replaceable(sidecar_path(self.destination), folder=False)
        # From here on the staged files are complete: a kill is finished by recover_exports, not undone.
        journal = {"destination": self.destination.name, "finals": [f.name for f in finals]}
        part = self.folder / (JOURNAL + ".part")
        part.write_text(json.dumps(journal))
        _fsync_file(part)
        os.replace(part, self.folder / JOURNAL)
        _fsync_dir(self.folder)
        _move_in(self.folder, self.destination, finals)
        _fsync_dir(self.destination.parent)  # make the renames durable

    def cleanup(self) -> None:
        # The journal goes first: a kill halfway through the removal must not leave a journal over a partial set.
        with contextlib.suppress(FileNotFoundError):
            (self.folder / JOURNAL).unlink()
        release_temporary(self.folder)

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def fan_edge_package(path: str | os.PathLike[str]) -> bool:
    """Whether the folder ``path`` is a package fan-edge wrote: an ``.mlpackage`` whose root model spec (named by its
    ``Manifest.json``) holds a valid fan-edge contract in its user-defined metadata.

    Read without coremltools (a recovery may run where it is not installed): the contract is the protobuf map entry
    ``key = METADATA_KEY, value = JSON`` of the spec, found and parsed as such. Anything else (a user's folder that
    has the artifact's name, a package of another tool) is not fan-edge's to replace.
    """
    root = Path(path)
    try:
        if root.is_symlink() or not root.is_dir():
            return False
        manifest = root / "Manifest.json"
        if manifest.is_symlink() or manifest.stat().st_size > MAX_MANIFEST_BYTES:
            return False
        data = json.loads(manifest.read_text())
        relative = data["itemInfoEntries"][data["rootModelIdentifier"]]["path"]
        spec = (root / "Data" / relative).resolve()
        if not isinstance(relative, str) or root.resolve() not in spec.parents or spec.stat().st_size > MAX_SPEC_BYTES:
            return False
        blob = spec.read_bytes()
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False
    key = METADATA_KEY.encode()
    entry = b"\x0a" + bytes([len(key)]) + key + b"\x12"  # map entry: field 1 (key), then field 2 (value), both bytes
    start = blob.find(entry)
    while start >= 0:
        length, shift, i = 0, 0, start + len(entry)
        while i < len(blob) and shift < 35:  # the value's length, a varint
            length |= (blob[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not blob[i - 1] & 0x80:
                break
        try:
            ModelContract.from_json(blob[i : i + length])
            return True
        except ContractError:
            start = blob.find(entry, start + 1)
    return False


def check_replaceable(final: Path, folder: bool) -> None:
    """Refuse (one line) to put an export's file (or, with ``folder``, a folder artifact) where something fan-edge
    did not write would be lost: a folder under a file's name, a file or a foreign folder under a package's name.

    An existing file is replaced (that is what ``--output`` asks); a folder only when :func:`fan_edge_package`.
    """
    if not (final.exists() or final.is_symlink()):
        return
    real_folder = final.is_dir() and not final.is_symlink()
    if folder:
        if not real_folder:
            raise ExportError(f"{final} exists and is not a folder; fan-export writes a package folder there: "
                              "remove it or choose another --output")
        if not fan_edge_package(final):
            raise ExportError(f"{final} is a folder fan-edge did not write (no fan-edge contract inside); fan-export "
                              "replaces only its own packages: remove it or choose another --output")
    elif final.is_dir():
        raise ExportError(f"{final} is an existing folder, not a file; fan-export never replaces a folder it did not "
                          "write: remove it or choose another --output")


def _move_in(folder: Path, destination: Path, finals: list[Path]) -> None:
    """Move what is still staged in ``folder`` to ``finals``, in order; idempotent, so a recovery can finish it."""
    pending = [f for f in finals if (folder / f.name).exists() or (folder / f.name).is_symlink()]
    if not pending:
        return
    for final in pending:  # all or nothing: refuse before the first move, not halfway
        check_replaceable(final, folder=(folder / final.name).is_dir())
    stale = sidecar_path(destination)
    # Never leave an old contract beside a new artifact, even for a moment (a sidecar already moved in is the new one).
    if (stale.exists() or stale.is_symlink()) and (stale not in finals or stale in pending):
        check_replaceable(stale, folder=False)
        stale.unlink()
    for final in pending:
        staged = folder / final.name
        if staged.is_dir():
            _replace_folder(staged, final)
        else:
            os.replace(staged, final)


def _read_journal(staging: Path, root: Path) -> tuple[Path, list[Path]] | None:
    """(destination, finals) of a staging folder whose commit began, else None (also for a journal naming anything but
    plain file names: a recovery never moves a file out of the folder it settles)."""
    try:
        data = json.loads((staging / JOURNAL).read_text())
        names = [data["destination"], *data["finals"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(n, str) and n not in ("", ".", "..") and Path(n).name == n for n in names):
        return None
    return root / names[0], [root / n for n in names[1:]]


def recover_exports(folder: str | os.PathLike[str]) -> list[Path]:
    """Settle what exports killed while writing into ``folder`` left behind; return the temporary folders removed.

    A staging folder with a journal is rolled forward (its commit had begun: every staged file is complete), one
    without is deleted; an older folder artifact moved aside is put back where nothing replaced it, else deleted.
    A folder whose roll-forward fails (permissions, a folder fan-edge did not write in the way) is kept, since it
    may hold the only copy of a new file. Only temporaries that their owner records prove fan-edge's are touched;
    the dead writers' other leftovers go as in :func:`fan_edge.atomic.remove_stale_temporaries`.
    """
    root = Path(folder)
    removed = []
    for temp in dead_temporaries(root, EXPORT_ROLE):
        journal = _read_journal(temp.path, root)
        if journal is not None:
            try:
                _move_in(temp.path, *journal)
            except (OSError, FanEdgeError):
                continue
            with contextlib.suppress(FileNotFoundError):
                (temp.path / JOURNAL).unlink()
        release_temporary(temp.path)
        removed.append(temp.path)
    for temp in dead_temporaries(root, ASIDE_ROLE):
        try:
            for entry in list(temp.path.iterdir()):
                target = root / entry.name
                if not (target.exists() or target.is_symlink()):
                    os.replace(entry, target)  # the move of the new folder never happened: the older one goes back
        except OSError:
            continue
        release_temporary(temp.path)
        removed.append(temp.path)
    remove_stale_temporaries(root)  # and what else dead writers left: their files, owner records, locks
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
    """Put ``staged`` (a complete folder) at ``final``, replacing what is there (a package fan-edge wrote: the caller
    checked) only once it is in place."""
    old = None
    if final.exists() or final.is_symlink():
        aside = make_temporary(final.parent, final.name, role=ASIDE_ROLE, directory=True)
        try:
            os.replace(final, aside / final.name)
        except BaseException:
            release_temporary(aside)
            raise
        old = aside / final.name
    try:
        os.replace(staged, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)  # put the older artifact back
            release_temporary(old.parent)
        raise
    if old is not None:
        release_temporary(old.parent)  # the older artifact, now aside in its private folder
