"""Typed errors that the CLI turns into one-line messages.

Every error a user can cause (a bad file, a bad argument, a folder without
faces) is raised as a subclass of ``FanEdgeError`` so that the CLI can print
its message without a traceback, while library users can catch it by type.
"""

from __future__ import annotations

import re


class FanEdgeError(Exception):
    """Base class of every error that fan-edge reports to a user."""


class CheckpointError(FanEdgeError):
    """A model file that cannot be loaded into the requested architecture."""


class ConfigError(FanEdgeError):
    """An unknown model name or an impossible model configuration."""


class DataError(FanEdgeError):
    """Bad annotations, images or data folders."""


class ContractError(FanEdgeError):
    """An exported artifact whose preprocessing contract is missing, malformed or unsupported."""


class BackendError(FanEdgeError):
    """An inference backend or device that is not installed, not present or cannot load an artifact."""


class ExportError(FanEdgeError):
    """An export that cannot be done as asked (target, precision, outputs, calibration, verification)."""


class ProfileError(FanEdgeError):
    """An on-device profile that cannot run: adb or ssh missing, no or several devices, a remote step failing, unreadable timings."""


class BenchError(FanEdgeError):
    """A benchmark that cannot be run as asked (targets, artifacts, options)."""


class OutputError(FanEdgeError):
    """An output that cannot be written: a folder where a file goes, a parent that is a file, a read-only folder.

    Raised by :func:`fan_edge.atomic.check_writable` before a command's long work, so that a wrong path costs a
    second, not the run, and leaves nothing half-written behind.
    """


class BoxError(DataError, ValueError):
    """A face box that cannot be cropped: not finite, empty, under a pixel, or absurdly large for its image.

    A DataError like every bad input (one line from the CLI) and a ValueError,
    as numerical code expects from the crop functions that raise it.
    """


def first_line(exc: BaseException, limit: int = 300, *, with_type: bool = False, drop: re.Pattern[str] | None = None) -> str:
    """The first non-blank line of ``exc``'s message, at most ``limit`` characters: an error in one line.

    An exception without a message gives its type's name. ``with_type`` puts the type first
    (``"ValueError: bad value"``), for errors that are not fan-edge's own. ``drop`` is removed from the
    message first: the source locations that native libraries (onnxruntime, OpenVINO) put in their errors.
    """
    text = str(exc) if drop is None else drop.sub("", str(exc))
    line = next((stripped for raw in text.splitlines() if (stripped := raw.strip())), "")[:limit]
    name = type(exc).__name__
    if with_type:
        return f"{name}: {line}" if line else name
    return line or name
