"""Running the device tools (adb, ssh, scp) with a time limit and one-line errors.

Every call goes through :func:`run_tool` so that a missing tool, a hung
connection or a device that stops answering becomes a
:class:`~fan_edge.errors.ProfileError` naming the step, never a traceback or
a process that waits forever.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence

from ...errors import ProfileError


def find_tool(name: str, hint: str) -> str:
    """The executable ``name`` (a bare name searched on PATH, or a path); ``hint`` says how to get it."""
    found = shutil.which(name)
    if found is None:
        raise ProfileError(f"{name} not found{' on PATH' if '/' not in name else ''}; {hint}")
    return found


def last_line(text: str) -> str:
    """The last non-empty line of a tool's output, which is where tools put the reason they failed."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def run_tool(command: Sequence[str], step: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to completion (stdout and stderr captured as text); ``step`` names it in errors.

    A non-zero exit is returned, not raised: what it means depends on the tool
    (ssh's 255 is a connection failure, adb shell passes the device command's
    status through), so callers decide.
    """
    try:
        return subprocess.run(list(command), capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
    except FileNotFoundError:
        raise ProfileError(f"{step}: {command[0]} not found") from None
    except PermissionError:
        raise ProfileError(f"{step}: {command[0]} is not executable") from None
    except subprocess.TimeoutExpired:
        raise ProfileError(f"{step} did not finish within {timeout:g} s ({shlex.join(command)[:200]})") from None
