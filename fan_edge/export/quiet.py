"""Quiet converters: what the exporters wrap around the libraries that print progress, logs and warnings.

``quiet_exporters`` silences Python-level output (torch.onnx, torch.export, onnxscript: loggers, warnings,
prints); ``silenced_native_output`` also sends file descriptors 1 and 2 to a scratch file, for libraries that
print from native code (litert-torch, the MLIR converter, ai-edge-quantizer, coremltools). Errors still raise.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings


@contextlib.contextmanager
def quiet_exporters():
    """Silence the exporters' progress prints and warnings (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def silenced_native_output():
    """litert-torch, the MLIR converter and the quantizer print progress and absl logs from native code: send
    file descriptors 1 and 2 to a scratch file while they run (Python errors still raise normally).
    ``FAN_EDGE_EXPORT_VERBOSE=1`` leaves them alone."""
    if os.environ.get("FAN_EDGE_EXPORT_VERBOSE") == "1":  # debugging a converter: let it speak
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        with tempfile.TemporaryFile() as sink, quiet_exporters():
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                for fd, copy in saved:
                    os.dup2(copy, fd)
                    os.close(copy)
                saved.clear()
    finally:
        for fd, copy in saved:  # only if the redirect itself failed half-way
            os.dup2(copy, fd)
            os.close(copy)
