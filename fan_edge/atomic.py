"""Write files whole or not at all; clean up only what fan-edge provably wrote; refuse unwritable outputs early.

Every file fan-edge produces (checkpoints, artifacts, sidecars, reports) is
written to a temporary and renamed into place, so an interrupted run never
leaves a half-written file or clobbers a good one.

Where temporaries live, and why. A temporary is made inside a folder of
fan-edge's own in the destination folder, :data:`STAGING_FOLDER`
(``.fan-edge-tmp/``; on the same file system, so the final rename is atomic),
and fan-edge writes an owner record beside it (``TEMP.owner``: a tag, the
writer's pid, a role, and the device and inode number of the temporary it
just created). A process killed with SIGKILL (the OOM killer, a scheduler's
hard limit, ``kill -9``) runs no ``finally``: its temporary stays behind, a
partial file that holds disk space. So the first write of a process into a
folder sweeps that folder's ``.fan-edge-tmp/``: a temporary is removed only
when its record is fan-edge's, names this very entry (same device and inode,
same kind) and its writer is dead. fan-edge once recognised its temporaries
by name alone (``.NAME.<pid>.<8 chars>.tmp`` anywhere in the folder), and
deleted a user's file or folder that happened to be named so when the pid in
the name was free: a name is something anyone can give a file, an inode
recorded by the process that created it is not. Nothing outside
``.fan-edge-tmp/`` is ever looked at; an entry without a matching record (a
user's, one copied from elsewhere, or a temporary whose writer was killed in
the instant between creating it and writing its record) is kept: the sweep
errs towards keeping. ``.fan-edge-tmp/`` itself goes with ``os.rmdir`` once
empty, which cannot remove anything else.

The pid test is ``os.kill(pid, 0)``: a pid reused by an unrelated process
keeps a dead writer's temporary until that process exits, never the reverse.
It cannot judge a writer on another machine sharing the folder over a network
file system; fan-edge's jobs write their own output folders.

Logs (``train.log``, ``qat.log``) are the one exception: they are appended
to, a record per ``write``, so a kill leaves the earlier lines whole.

:func:`check_writable` is the one check every command runs on its outputs
before its long work: a parent that is a file, a folder where a file goes, a
read-only folder are each a one-line :class:`~fan_edge.errors.OutputError`
at once, not a traceback after the run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError

STAGING_FOLDER = ".fan-edge-tmp"  # in a destination folder: fan-edge's temporaries and locks, nothing else
RECORD_SUFFIX = ".owner"  # TEMP.owner: the owner record of the temporary TEMP
RECORD_TAG = "fan-edge temporary"
MAX_RECORD_BYTES = 4096
NAME_CHARS = 100  # of a final name kept in its temporary's name (informational; keeps the name under NAME_MAX)
FILE_ROLE = "file"  # atomic_path's temporaries: the only role the sweep removes (others have their own recovery)

_swept: set[Path] = set()
_swept_lock = threading.Lock()


@dataclass(frozen=True)
class Temporary:
    """A temporary that fan-edge provably made (its owner record names its inode)."""

    path: Path
    pid: int  # its writer
    role: str  # FILE_ROLE, or a caller's own ("export", "export-old": fan_edge.export.staging)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine); a process of another user counts as alive."""
    if pid <= 0:
        return True  # not a pid any writer had: never judge it dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def staging_folder(folder: str | os.PathLike[str]) -> Path:
    """Where fan-edge keeps its temporaries for files of ``folder`` (not created)."""
    return Path(folder) / STAGING_FOLDER


def open_staging_folder(folder: str | os.PathLike[str]) -> Path:
    """:func:`staging_folder`, made if missing; a file or a link under that name is an OutputError (never followed).

    May raise FileNotFoundError when another process removes the empty folder at that instant: callers retry.
    """
    staging = staging_folder(folder)
    with contextlib.suppress(FileExistsError):
        os.mkdir(staging)
    if not stat.S_ISDIR(os.lstat(staging).st_mode):
        raise OutputError(f"{staging} is not a folder: fan-edge keeps its temporaries there; move it away")
    return staging


def remove_staging_folder_if_empty(folder: str | os.PathLike[str]) -> None:
    """Remove ``folder``'s :data:`STAGING_FOLDER` if it is empty (``os.rmdir``: anything in it keeps it)."""
    with contextlib.suppress(OSError):
        os.rmdir(staging_folder(folder))


def _record_path(temporary: Path) -> Path:
    return temporary.with_name(temporary.name + RECORD_SUFFIX)


def make_temporary(folder: str | os.PathLike[str], name: str, role: str = FILE_ROLE, directory: bool = False) -> Path:
    """Create an empty temporary file (or folder) for the final ``folder/name``; return its path.

    It lives in ``folder``'s ``.fan-edge-tmp/`` as ``NAME.<pid>.<random>.tmp``, with an owner record that proves to a
    later sweep that fan-edge made it (see the module docstring). Release it with :func:`release_temporary`.
    """
    folder = Path(folder)
    prefix = f"{name[:NAME_CHARS]}.{os.getpid()}."
    for _ in range(100):
        try:
            staging = open_staging_folder(folder)
            if directory:
                path = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=staging))
            else:
                fd, text = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=staging)
                os.close(fd)
                path = Path(text)
            break
        except FileNotFoundError:
            if not folder.is_dir():
                raise
            # Another process removed the empty .fan-edge-tmp/ between our mkdir and our create: make it again.
    else:
        raise OutputError(f"{folder}: cannot make a temporary in {STAGING_FOLDER}/ (it keeps disappearing)")
    try:
        st = os.lstat(path)
        record = {"tag": RECORD_TAG, "pid": os.getpid(), "role": role, "dev": st.st_dev, "ino": st.st_ino, "dir": directory}
        fd = os.open(_record_path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, json.dumps(record).encode())  # one small write: whole or absent (then the temporary is kept)
        finally:
            os.close(fd)
    except BaseException:
        release_temporary(path)
        raise
    return path


def _read_record(record: Path) -> dict | None:
    """An owner record's fields, or None when the file is not one of fan-edge's."""
    try:
        with open(record, "rb") as fh:
            text = fh.read(MAX_RECORD_BYTES + 1)
        data = json.loads(text) if len(text) <= MAX_RECORD_BYTES else None
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("tag") != RECORD_TAG:
        return None
    fields = {"pid": int, "role": str, "dev": int, "ino": int, "dir": bool}
    if not all(isinstance(data.get(k), t) and not (t is int and isinstance(data.get(k), bool)) for k, t in fields.items()):
        return None
    return data


def _owned(temporary: Path, record: dict) -> bool:
    """Whether ``temporary`` is the very entry the record was written for (not a later one under its name)."""
    try:
        st = os.lstat(temporary)
    except OSError:
        return False
    kind_ok = stat.S_ISDIR(st.st_mode) if record["dir"] else stat.S_ISREG(st.st_mode)
    return kind_ok and st.st_dev == record["dev"] and st.st_ino == record["ino"]


def _scan(folder: Path) -> tuple[list[Temporary], list[tuple[Path, int]]]:
    """(the temporaries in ``folder``'s staging folder that their records prove fan-edge's, oldest first;
    records of fan-edge's whose temporary is gone, with their writer's pid)."""
    staging = staging_folder(folder)
    try:
        if not stat.S_ISDIR(os.lstat(staging).st_mode):
            return [], []
        entries = [e.name for e in os.scandir(staging)]
    except OSError:
        return [], []
    owned, orphans = [], []
    for name in entries:
        if not name.endswith(RECORD_SUFFIX):
            continue
        record = _read_record(staging / name)
        if record is None:
            continue
        path = staging / name[: -len(RECORD_SUFFIX)]
        if _owned(path, record):
            owned.append(Temporary(path, record["pid"], record["role"]))
        elif not (path.exists() or path.is_symlink()):
            orphans.append((staging / name, record["pid"]))
    return sorted(owned, key=lambda t: _mtime(t.path)), orphans


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def temporaries(folder: str | os.PathLike[str]) -> list[Temporary]:
    """The temporaries for files of ``folder`` that fan-edge provably made (any writer, live or dead), oldest first."""
    return _scan(Path(folder))[0]


def temporary_owner(path: str | os.PathLike[str]) -> int | None:
    """The writer's pid of a temporary fan-edge made, or None when ``path`` is not one (whatever its name)."""
    path = Path(path)
    record = _read_record(_record_path(path))
    return record["pid"] if record is not None and _owned(path, record) else None


def release_temporary(path: str | os.PathLike[str]) -> None:
    """Forget a temporary of fan-edge's: remove it if it is still there (a folder with all it holds), then its record,
    then the staging folder if that leaves it empty. The temporary goes first: a kill in between leaves a record
    without its temporary, which the next sweep removes."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    with contextlib.suppress(FileNotFoundError):
        _record_path(path).unlink()
    if path.parent.name == STAGING_FOLDER:
        remove_staging_folder_if_empty(path.parent.parent)  # if this was the last thing in it


def dead_temporaries(folder: str | os.PathLike[str], role: str) -> list[Temporary]:
    """``folder``'s temporaries of ``role`` whose writer is no longer alive (not this process's), oldest first."""
    me = os.getpid()
    return [t for t in temporaries(folder) if t.role == role and t.pid != me and not pid_alive(t.pid)]


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete :func:`atomic_path`'s temporaries in ``folder`` whose writer is dead; return what was removed.

    Only entries of ``.fan-edge-tmp/`` that an owner record proves fan-edge's are candidates (see the module
    docstring); a live writer's are kept, and so are other roles' (an export's staging folder is settled by
    :func:`fan_edge.export.staging.recover_exports`, which may have to finish its commit first).
    """
    folder = Path(folder)
    removed = []
    for temp in dead_temporaries(folder, FILE_ROLE):
        release_temporary(temp.path)
        removed.append(temp.path)
    cleared = False
    for record, pid in _scan(folder)[1]:
        if pid != os.getpid() and not pid_alive(pid):
            with contextlib.suppress(FileNotFoundError):
                record.unlink()  # its writer was killed after moving its temporary away
                cleared = True
    if _remove_dead_locks(folder) or cleared:
        remove_staging_folder_if_empty(folder)  # emptied by this sweep (release_temporary did it for the others)
    return removed


def _sweep_once(folder: Path) -> None:
    """:func:`remove_stale_temporaries` the first time this process writes into ``folder`` (a listing per write would
    make writing N files into one folder quadratic; temporaries of writers killed later are the next process's to sweep)."""
    key = folder.resolve()
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    remove_stale_temporaries(key)


def check_writable(path: str | os.PathLike[str], what: str = "", *, kind: str = "file") -> Path:
    """Refuse now, in one line, an output that could not be written later; return it as a Path.

    Commands call this on their outputs before any long work (loading a model, training, exporting), so that a
    wrong path costs a second, not the run, and leaves nothing half-written: it creates nothing. ``kind``:
    "file", a file to be written (replaced by a rename: what matters is that its folder takes new entries; an
    existing folder there is refused); "folder", a folder to write into (made when missing); "entry", a file or
    folder that replaces whatever is at ``path`` (the caller judges what is there). ``what`` names the option in
    the message ("--output"). Refused besides: a parent that is a file, a folder this user cannot write
    (permissions, a read-only file system), a non-folder named ``.fan-edge-tmp`` where fan-edge needs its own.
    """
    if kind not in ("file", "folder", "entry"):
        raise ValueError(f"kind must be file, folder or entry, got {kind!r}")
    p = Path(path)
    label = f"{what} {p}" if what else str(p)
    if kind == "file" and p.is_dir():
        raise OutputError(f"{label} is a folder; give a file name")
    if kind == "folder" and p.exists() and not p.is_dir():
        raise OutputError(f"{label} is a file, not a folder")
    target = p if kind == "folder" else p.parent
    existing = target
    while True:
        try:
            st = os.stat(existing)
            break
        except (FileNotFoundError, NotADirectoryError):
            if existing.parent == existing:
                raise OutputError(f"{label}: no part of its path exists") from None
            existing = existing.parent
        except OSError as exc:
            raise OutputError(f"{label}: {existing} cannot be read ({_why(exc)})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{label}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{label}: {existing} is not writable")
    if existing == target:
        staging = staging_folder(target)
        if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
            raise OutputError(f"{label}: {staging} is not a folder: fan-edge keeps its temporaries there; move it away")
    return p


LOCK_SUFFIX = ".lock"
LOCK_TAG = "fan-edge lock"
_held: dict[Path, list[int]] = {}  # lock file -> [thread ident, depth], for the locks this process holds
_held_guard = threading.Lock()


def _lock_file(path: Path) -> Path:
    return staging_folder(path.parent) / f"{path.name[: NAME_CHARS * 2]}{LOCK_SUFFIX}"


def _lock_holder(fd: int) -> str:
    """" (pid N)" from a lock file's record, or "" when it has none."""
    try:
        data = json.loads(os.pread(fd, MAX_RECORD_BYTES, 0) or b"{}")
        return f" (pid {int(data['pid'])})" if data.get("tag") == LOCK_TAG else ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""


def _try_lock(fd: int, wait: bool) -> bool:
    """flock ``fd`` exclusively; False when another holds it and ``wait`` is not set."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _acquire(path: Path, who: str, wait: bool) -> tuple[int, Path, list[Path]]:
    """The open, flocked lock file of output ``path``, its record naming this process; and the folders made for it
    (deepest first), which the release removes again if the run left them empty."""
    made = []
    folder = path.parent
    while not folder.exists() and folder.parent != folder:
        made.append(folder)
        folder = folder.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        check_writable(path, kind="entry")  # names the cause (a parent that is a file, a read-only folder)
        raise OutputError(f"{path}: its folder cannot be made ({_why(exc)})") from None
    for _ in range(1000):
        try:
            lock = open_staging_folder(path.parent) / _lock_file(path).name
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            if not path.parent.is_dir():
                raise
            continue  # the empty .fan-edge-tmp/ was removed in between: make it again
        try:
            # A sweep checking whether the lock is dead holds it for microseconds: a few tries tell it from a writer.
            for _attempt in range(10):
                if _try_lock(fd, wait):
                    break
                time.sleep(0.05)
            else:
                raise OutputError(f"{path}: another {who}{_lock_holder(fd)} is writing it; wait for it to finish "
                                  "or choose another output")
            # A holder that was releasing unlinked the file between our open and our lock: lock the new one instead.
            mine, now = os.fstat(fd), os.stat(lock)
            if (mine.st_dev, mine.st_ino) != (now.st_dev, now.st_ino):
                os.close(fd)
                continue
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"tag": LOCK_TAG, "pid": os.getpid()}).encode(), 0)
        return fd, lock, made
    raise OutputError(f"{path}: cannot take its lock in {STAGING_FOLDER}/ (it keeps disappearing)")


def _release(fd: int, lock: Path, made: list[Path]) -> None:
    """Remove the lock file (still holding it, so no one else can have it), then unlock; then the folders the lock
    made, if nothing was written into them (a run refused or failed before its commit leaves no empty folder)."""
    with contextlib.suppress(OSError):
        lock.unlink()
    os.close(fd)
    remove_staging_folder_if_empty(lock.parent.parent)
    for folder in made:
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def _remove_dead_locks(folder: Path) -> int:
    """Remove lock files of fan-edge's in ``folder``'s staging folder that no one holds (their holder was killed);
    return how many."""
    staging = staging_folder(folder)
    removed = 0
    try:
        names = [e.name for e in os.scandir(staging) if e.name.endswith(LOCK_SUFFIX) and e.is_file(follow_symlinks=False)]
    except OSError:
        return removed
    for name in names:
        lock = staging / name
        if lock in _held:
            continue
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            if not _lock_holder(fd) or not _try_lock(fd, wait=False):
                continue  # not fan-edge's, or held
            mine, now = os.fstat(fd), os.stat(lock)
            if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                lock.unlink()
                removed += 1
        except (OSError, ImportError):
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str], who: str = "fan-edge run", wait: bool = False) -> Iterator[None]:
    """Hold the lock of output ``path`` (and the files that go with it: its sidecar, its weights) for the block.

    Why: two runs writing one output interleave. Two ``fan-export`` runs to one output once left the artifact of
    one with the sidecar of the other, and the first then verified the second's artifact (README.md, Reliability).
    Another process (or
    another thread of this one) asking for a held lock is refused at once with a one-line OutputError naming
    ``who`` holds it, or with ``wait`` waits its turn; the same thread may take it again (re-entrant).
    The lock is ``fcntl.flock`` on ``.fan-edge-tmp/NAME.lock`` in the output's folder: the kernel releases it when
    its holder dies, so a killed run never blocks the next one, and the file goes when the lock is released (or,
    after a kill, with the next sweep). Where ``fcntl`` does not exist (Windows), runs are not serialised.
    """
    final = Path(os.path.realpath(Path(path).parent)) / Path(path).name
    key, me = _lock_file(final), threading.get_ident()
    while True:
        with _held_guard:
            entry = _held.get(key)
            if entry is None:
                entry = _held[key] = [me, 0]  # reserved for this thread before the file lock is taken
                fresh = True
                break
            if entry[0] == me:
                fresh = False
                break
        if not wait:
            raise OutputError(f"{path}: another {who} in this process is writing it; wait for it to finish or choose another output")
        time.sleep(0.05)
    entry[1] += 1
    if not fresh:  # this thread holds it already
        try:
            yield
        finally:
            entry[1] -= 1
        return
    held = None
    try:
        try:
            import fcntl  # noqa: F401
        except ImportError:
            pass
        else:
            held = _acquire(final, who, wait)
        yield
    finally:
        with _held_guard:
            del _held[key]
        if held is not None:
            _release(*held)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path for ``path``; on success it replaces ``path`` atomically.

    The temporary is in ``.fan-edge-tmp/`` beside ``path``, with an owner record (see the module docstring: a later
    process removes it should this one be killed before the rename). A path that cannot be written is a one-line
    :class:`~fan_edge.errors.OutputError` before the caller writes anything.
    """
    final = Path(path)
    if final.is_dir() and not final.is_symlink():
        raise OutputError(f"{final} is a folder; give a file name")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _sweep_once(final.parent)
        tmp = make_temporary(final.parent, final.name)
    except OutputError:
        raise
    except OSError as exc:
        check_writable(final)  # names the cause (a parent that is a file, a read-only folder)
        raise OutputError(f"{final} cannot be written ({_why(exc)})") from None
    try:
        yield tmp
        # mkstemp (and some writers, e.g. safetensors) create files 0600; give the result the
        # permissions an ordinary new file would get (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        release_temporary(tmp)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
