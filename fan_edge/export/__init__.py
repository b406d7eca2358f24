"""From a PyTorch FAN to deployable artifacts (ONNX, OpenVINO IR, TFLite, Core ML).

``export_model`` (and the ``fan-export`` command) writes each artifact with
its preprocessing contract inside and in a sidecar JSON, atomically, then
checks it against the PyTorch model on real faces. See ``docs/export.md``.
Importing this package needs torch; the artifacts it writes do not.
"""

from .exporter import TARGETS, ExportResult, Target, export_model, format_table
from .int8 import Int8Recipe
from .parity import DECODE_TOLERANCE_PX, TOLERANCES, ParityReport, verify_artifact

__all__ = [
    "DECODE_TOLERANCE_PX",
    "TARGETS",
    "TOLERANCES",
    "ExportResult",
    "Int8Recipe",
    "ParityReport",
    "Target",
    "export_model",
    "format_table",
    "verify_artifact",
]
