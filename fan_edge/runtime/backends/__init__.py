"""Inference backends: one module each, one small interface, one table.

A backend loads an artifact and runs NCHW (or NHWC) float32 batches through
it; it knows nothing about faces, crops or decoding (that is
:mod:`fan_edge.runtime.session`). Adding a backend
is one module with a :class:`Backend` subclass and one row of
:data:`BACKENDS` (``litert`` runs ``.tflite``; Core ML has none: it runs only
on Apple platforms). Backend modules import their library lazily, so that
``import fan_edge.runtime`` needs numpy alone.

Devices: each backend maps fan-edge's device names onto what its library
offers (``cpu``, ``gpu``, ``npu`` everywhere, plus the library's own names,
such as ONNX Runtime's ``cuda`` or ``tensorrt`` execution providers or
OpenVINO's ``gpu.1``); ``auto`` takes the best one present; anything absent is
a one-line :class:`~fan_edge.errors.BackendError` listing what is present
(:func:`device_error`). After loading, :attr:`Backend.device` names the device
the model actually runs on. docs/runtime.md has the table.

Threads: :meth:`Backend.run` may be called from several threads at once;
each backend says how it makes that safe (ONNX Runtime's ``Run`` is
thread-safe; OpenVINO infer requests and LiteRT interpreters are not, so those
backends keep a :class:`~fan_edge.runtime.backends.pool.InstancePool` of them).
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from ...errors import BackendError, FanEdgeError, first_line
from ...limits import MAX_THREADS, check_int


# The largest tensor a backend accepts in a graph as declared (dynamic axes counted as 1). FAN's largest activation
# is 8 MB (fan4 at 256: 128 channels at 128x128), so this leaves a fixed batch of 32 of it; a file declaring more (a
# hostile or corrupted shape: fuzzing found 2 kB .tflite files asking for 12 GB and for 0.4 GB inputs) is refused
# at load instead of being allocated on the first run.
MAX_TENSOR_BYTES = 256 << 20


def check_tensor_bytes(path: Path, name: str, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse a declared tensor over :data:`MAX_TENSOR_BYTES` (dynamic axes, as -1 or None, count as 1)."""
    count = 1
    for d in shape:
        count *= d if isinstance(d, int) and d > 0 else 1
    if count * itemsize > MAX_TENSOR_BYTES:
        raise BackendError(
            f"{path}: tensor {str(name)[:80]!r} of shape {tuple(shape)} would take {count * itemsize / 2**30:.1f} GiB "
            f"(more than {MAX_TENSOR_BYTES / 2**30:.2f} GiB): not a FAN, refused before allocating it"
        )


class TensorInfo(NamedTuple):
    """A graph input or output: name, shape (None for a dynamic axis) and element type."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


class Backend(ABC):
    """Common interface of the inference backends.

    ``device`` is what the caller asked for ("auto", "cpu", "gpu", ...);
    subclasses resolve it and set :attr:`device` to the device in use.
    ``extra_outputs`` names intermediate tensors to expose as outputs too
    (the export's parity report reads the heatmaps inside a landmarks graph
    this way); most callers leave it empty. :meth:`run` must be safe to call
    from several threads at once.
    """

    name: ClassVar[str] = ""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None, extra_outputs: tuple[str, ...] = ()):
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
        """Devices this backend can use here, best first, lower case (e.g. ``["gpu", "cpu"]``)."""
        return ["cpu"]

    @property
    def engine_objects(self) -> int:
        """How many engine objects (sessions, infer requests, interpreters) this backend holds now; read-only.

        A backend whose run state is thread-safe serves every call with one
        object (the default, 1); a pooling backend reports its pool's size: one
        object per call that was ever in flight at once, so the figure stays
        flat after warm-up. The soak (:mod:`fan_edge.ondevice.soak`) reports
        it to show that threads do not multiply engines.
        """
        return 1

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
    "onnxruntime": BackendEntry("onnxruntime_backend", "OnnxRuntimeBackend", (".onnx",), "onnxruntime", "onnxruntime"),
    "openvino": BackendEntry("openvino_backend", "OpenVINOBackend", (".xml", ".onnx"), "openvino", "openvino"),
    "litert": BackendEntry("litert_backend", "LiteRTBackend", (".tflite",), "ai_edge_litert", "litert"),
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


def normalise_device(device: object) -> str:
    """The device name as the backends compare it: lower case, no surrounding spaces."""
    if not isinstance(device, str) or not device.strip():
        raise BackendError(f"device must be a name such as auto, cpu, gpu or npu, got {device!r}")
    return device.strip().lower()


def device_error(backend: str, device: str, present: list[str], reason: str = "") -> BackendError:
    """The one-line error for a device that is absent (or that failed to start), listing what is present."""
    why = f" ({reason})" if reason else ""
    return BackendError(f"device {device!r} is not available to the {backend} backend{why}; present: {', '.join(present) or 'none'}")


def available_devices() -> dict[str, list[str]]:
    """Devices each installed backend reports on this machine, e.g. ``{"onnxruntime": ["cpu"], ...}``."""
    found: dict[str, list[str]] = {}
    for name, entry in BACKENDS.items():
        if _installed(entry.package):
            found[name] = backend_class(name).devices()
    return found


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
    if threads is not None:  # bounded: 100,000 intra-op threads crash the native runtimes without a word
        check_int("threads", threads, 1, MAX_THREADS, BackendError)
    name = choose_backend(p, backend)
    cls = backend_class(name)
    device = normalise_device(device)
    try:
        return cls(p, device=device, threads=threads, extra_outputs=tuple(extra_outputs))
    except FanEdgeError:
        raise
    except Exception as exc:  # a native library's error that its backend did not foresee: the file is not loadable
        raise BackendError(f"{p}: the {name} backend cannot load it ({first_line(exc, 200, with_type=True)})") from None


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendEntry",
    "TensorInfo",
    "available_devices",
    "backend_class",
    "check_tensor_bytes",
    "choose_backend",
    "device_error",
    "load_backend",
    "normalise_device",
]
