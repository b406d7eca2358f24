"""Inference backends: one module each, one small interface, one table.

A backend loads an artifact and runs NCHW (or NHWC) float32 batches through
it; it knows nothing about faces, crops or decoding (that is
:mod:`fan_edge.runtime.session`). Adding a backend
is one module with a :class:`Backend` subclass and one row of
:data:`BACKENDS` (``litert`` runs ``.tflite``; Core ML has none: it runs only
on Apple platforms). Backend modules import their library lazily, so that
``import fan_edge.runtime`` needs numpy alone.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from ...errors import BackendError


class TensorInfo(NamedTuple):
    """A graph input or output: name, shape (None for a dynamic axis) and element type."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


class Backend(ABC):
    """Common interface of the inference backends.

    ``extra_outputs`` names intermediate tensors to expose as outputs too
    (the export's parity report reads the heatmaps inside a landmarks graph
    this way); most callers leave it empty.
    """

    name: ClassVar[str] = ""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, extra_outputs: tuple[str, ...] = ()):
        self.path = Path(path)
        self.device = device
        self.threads = threads
        self.extra_outputs = tuple(extra_outputs)

    @property
    @abstractmethod
    def inputs(self) -> list[TensorInfo]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorInfo]: ...

    @abstractmethod
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch (the graph's single input) and return every output by name."""

    @abstractmethod
    def metadata(self) -> dict[str, str]:
        """The format's own string metadata (where the contract is stored inside the artifact)."""

    @classmethod
    def devices(cls) -> list[str]:
        """Devices this backend can see here (lower case, e.g. ``["cpu"]``)."""
        return ["cpu"]

    @property
    def dynamic_batch(self) -> bool:
        shape = self.inputs[0].shape
        return bool(shape) and shape[0] is None

    def close(self) -> None:
        """Release the loaded model (optional)."""


@dataclass(frozen=True)
class BackendEntry:
    """A row of the backend table: where the class lives, what it reads, what to install."""

    module: str
    cls: str
    suffixes: tuple[str, ...]
    package: str  # import name of the library it needs
    extra: str  # the fan-edge extra that installs it


BACKENDS: dict[str, BackendEntry] = {
    "onnxruntime": BackendEntry("onnxruntime_backend", "OnnxRuntimeBackend", (".onnx",), "onnxruntime", "onnx"),
    "openvino": BackendEntry("openvino_backend", "OpenVINOBackend", (".xml", ".onnx"), "openvino", "openvino"),
    "litert": BackendEntry("litert_backend", "LiteRTBackend", (".tflite",), "ai_edge_litert", "tflite"),
}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def backend_class(name: str) -> type[Backend]:
    """The class of backend ``name``; a one-line error if it is unknown or its library is absent."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise BackendError(f"unknown backend {name!r}; expected auto or one of: {', '.join(BACKENDS)}")
    if not _installed(entry.package):
        raise BackendError(f"backend {name} needs the {entry.package} package: pip install 'fan-edge[{entry.extra}]'")
    module = importlib.import_module(f"{__name__}.{entry.module}")
    return getattr(module, entry.cls)


def choose_backend(path: str | Path, backend: str = "auto") -> str:
    """The backend for ``path``: ``backend`` itself, or with "auto" the first installed one that reads its suffix."""
    if backend != "auto":
        backend_class(backend)
        suffix = Path(path).suffix.lower()
        if suffix not in BACKENDS[backend].suffixes:
            raise BackendError(f"backend {backend} does not read {suffix or 'suffix-less'} files ({', '.join(BACKENDS[backend].suffixes)})")
        return backend
    suffix = Path(path).suffix.lower()
    readers = [name for name, entry in BACKENDS.items() if suffix in entry.suffixes]
    if not readers:
        known = sorted({s for e in BACKENDS.values() for s in e.suffixes})
        raise BackendError(f"{path}: no backend reads {suffix or 'suffix-less'} files (known: {', '.join(known)})")
    for name in readers:
        if _installed(BACKENDS[name].package):
            return name
    entry = BACKENDS[readers[0]]
    raise BackendError(f"{path}: needs {' or '.join(readers)}; install one, e.g. pip install 'fan-edge[{entry.extra}]'")


def check_device(cls: type[Backend], device: str) -> str:
    """Only the CPU is wired up for now; anything else is a one-line error listing what is present."""
    if not isinstance(device, str) or device.lower() not in ("auto", "cpu"):
        try:
            present = ", ".join(cls.devices()) or "none"
        except Exception:  # listing devices must not hide the real message
            present = "unknown"
        raise BackendError(f"device {device!r} is not supported yet by the {cls.name} backend (cpu only; devices present: {present})")
    return "cpu"


def load_backend(
    path: str | Path,
    backend: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    extra_outputs: tuple[str, ...] = (),
) -> Backend:
    """Open ``path`` with a backend chosen by name or by file suffix."""
    p = Path(path)
    if not p.is_file():
        raise BackendError(f"{p}: no such file")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise BackendError(f"threads must be a positive integer, got {threads!r}")
    name = choose_backend(p, backend)
    cls = backend_class(name)
    dev = check_device(cls, device)
    return cls(p, device=dev, threads=threads, extra_outputs=tuple(extra_outputs))


__all__ = ["BACKENDS", "Backend", "BackendEntry", "TensorInfo", "backend_class", "check_device", "choose_backend", "load_backend"]
