"""The largest values fan-edge accepts for every number that sizes memory, work or threads.

A config, a flag or a file that asks for more than these is refused at once
with a one-line error that names the bound, instead of allocating terabytes,
starting thousands of threads or crashing without a word (issue 18). The
bounds are generous for real use (FAN is 4 stacks of width 256 at 256x256,
68 landmarks) and live in one place, so that a config typed on the command
line, one read from a checkpoint and an exported artifact's contract agree.
This module is plain Python (no torch): the runtime uses it too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .errors import ConfigError, FanEdgeError

# ---- architecture and input (FANConfig, the contract of an artifact, training) -----------------------------
MAX_INPUT_SIZE = 1024  # crop side in pixels; FAN uses 256, the zoo 128 to 256
MAX_WIDTH = 1024  # hourglass feature channels, and any one layer's channels; released 256
MAX_STACKS = 8  # released 4
MAX_HOURGLASS_DEPTH = 6  # released 4; each level halves the resolution
MAX_LANDMARKS = 1000  # 68 (300-W), 98 (WFLW), 468 (dense face meshes)
# Values (weights, biases, BatchNorm statistics) of one FAN: 2DFAN-4 has 23.8M. 128M float32 values are 512 MB.
MAX_PARAMETERS = 128_000_000
MAX_BATCH_SIZE = 4096
# Faces times pixels per face of one batch: 4096 faces at 128x128, 1024 at 256x256, 64 at 1024x1024. The input
# alone is 0.8 GB at this bound, the activations many times that.
MAX_BATCH_PIXELS = 4096 * 128 * 128

# ---- threads and processes ------------------------------------------------------------------------------------
MAX_THREADS = 256  # intra-op threads of a backend or of torch, or caller threads of a soak
MAX_WORKERS = 64  # processes (data loading, labelling)

# ---- files (checkpoints, training states) -----------------------------------------------------------------
# Tensor bytes one checkpoint or training state may declare: MAX_PARAMETERS float32 values, or a 2DFAN-4 training
# state (weights and Adam's two moments, 286 MB) with room to spare. Checked against the sizes a file declares
# (zip directory, pickle, safetensors header) before anything is read, so that no file costs more than this.
MAX_CHECKPOINT_BYTES = 512 << 20
MAX_PICKLE_BYTES = 16 << 20  # the pickle of a state dict is about 100 bytes per tensor (2DFAN-4's state: 0.1 MB)
# Python objects one pickle may build: a byte of pickle can make a 200-byte object (an empty set), so the pickle's own
# size does not bound them.
MAX_PICKLE_MEMORY = 128 << 20
MAX_ARCHIVE_ENTRIES = 65_536  # files in a zip checkpoint: one per tensor storage (a 2DFAN-4 training state has ~3,000)
MAX_HEADER_BYTES = 4 << 20  # a safetensors header (JSON): about 100 bytes per tensor


def describe(value: Any) -> str:
    """A short, one-line rendering of a refused value, whatever it is: huge integers (past Python's digit limit),
    long texts, big containers and objects whose repr spans lines (a tensor) included."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"
    if isinstance(value, (tuple, list, dict, set, frozenset)) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value):,} items"
    try:
        text = " ".join(repr(value).split())
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(name: str, value: Any, lo: int, hi: int, error: type[FanEdgeError] = ConfigError, why: str = "") -> int:
    """``value`` if it is an integer in ``lo..hi``, else a one-line ``error`` that states the range.

    Booleans are refused (``True`` is an int to Python, never a count here);
    ``why`` adds the reason for the bound to the message.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{name} must be an integer, got {describe(value)}")
    if not lo <= value <= hi:
        raise error(f"{name} must be between {lo} and {hi}{f' ({why})' if why else ''}, got {describe(value)}")
    return value


def check_batch(batch_size: Any, input_size: int, error: type[FanEdgeError] = ConfigError) -> int:
    """A batch size within :data:`MAX_BATCH_SIZE` whose pixels at ``input_size`` stay within :data:`MAX_BATCH_PIXELS`."""
    check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE, error)
    if batch_size * input_size * input_size > MAX_BATCH_PIXELS:
        most = max(1, MAX_BATCH_PIXELS // (input_size * input_size))
        raise error(
            f"batch_size {batch_size} at input size {input_size} is {batch_size * input_size * input_size:,} pixels a batch, "
            f"more than fan-edge allows ({MAX_BATCH_PIXELS:,}); use a batch of at most {most} at this size"
        )
    return batch_size


def int_arg(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse ``type`` for an integer in ``lo..hi``: out of range is argparse's one-line usage error, at parse time."""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError is argparse's own "invalid int value: 'two'"
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {describe(value)}")
        return value

    parse.__name__ = "int"
    return parse


def positive_int(text: str) -> int:
    """An argparse ``type`` for a count of one or more, without an upper bound (runs, calls)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse ``type`` for a count of zero or more, without an upper bound (warm-up runs)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


# The argparse types of the flags that start threads or processes.
threads_arg = int_arg(1, MAX_THREADS)
workers_arg = int_arg(1, MAX_WORKERS)
loader_workers_arg = int_arg(0, MAX_WORKERS)  # a DataLoader's: 0 loads in the training process itself
batch_arg = int_arg(1, MAX_BATCH_SIZE)
input_size_arg = int_arg(1, MAX_INPUT_SIZE)


def head_stride_arg(text: str) -> int:
    """An argparse ``type`` for a heatmap stride: 4 (FAN's heads) or 2 (fine heads)."""
    value = int(text)
    if value not in (2, 4):
        raise argparse.ArgumentTypeError(f"must be 4 (FAN's heatmaps) or 2 (fine heads), got {text}")
    return value
