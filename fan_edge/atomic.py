"""Write files whole or not at all.

Every file fan-edge produces (checkpoints, artifacts, sidecars, reports) is
written to a temporary name in the destination folder and renamed into place,
so an interrupted run never leaves a half-written file or clobbers a good one.

A process killed with SIGKILL (the OOM killer, a scheduler's hard time
limit, ``kill -9``) runs no ``finally`` and no ``atexit``: its
temporary stays behind, a partial file. Readers never see it as the artifact
(it has its own dotted name), but it holds disk space and, to a person or a
sync tool, looks like a half-written result. So a temporary's name carries
its writer's pid, ``.NAME.<pid>.<random>.tmp``, and the first write of a
process into a folder sweeps that folder: a temporary whose pid is no longer
alive is removed, one whose pid is alive (another writer, still working) is
left alone. The test is ``os.kill(pid, 0)``: it errs towards keeping (a pid
reused by an unrelated process keeps a dead writer's temporary until that
process exits), never towards deleting a live writer's file. It cannot judge
a writer on another machine sharing the folder over a network file system
(a wrong guess there costs that writer a failed rename, a loud error, never a
partial file); fan-edge's jobs write their own output folders, so the case
does not arise in its own use.

Logs (``train.log``, ``qat.log``) are the one exception: they are appended
to, a record per ``write``, so a kill leaves the earlier lines whole and the
resumed run appends its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

# .NAME.<pid>.<random>.tmp, as atomic_path names its temporaries (mkstemp's random part is 8 of [a-z0-9_]).
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[1-9][0-9]*)\.[a-z0-9_]{8}\.tmp$")

_swept: set[Path] = set()
_swept_lock = threading.Lock()


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


def temp_owner(name: str) -> int | None:
    """The writer's pid in an :func:`atomic_path` temporary's file name, or None when ``name`` is not one."""
    match = TEMP_NAME.match(name)
    return int(match["pid"]) if match else None


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries in ``folder`` whose writer is dead; return what was removed.

    Only names of :data:`TEMP_NAME`'s form are looked at; a live writer's are kept.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        pid = temp_owner(entry.name)
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        path = Path(entry.path)
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary is ``.NAME.<pid>.<random>.tmp`` (see the module docstring: a later process removes it should
    this one be killed before the rename).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(final.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
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
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
