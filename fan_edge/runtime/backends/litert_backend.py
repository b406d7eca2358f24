"""LiteRT backend (``.tflite``, TFLite's runtime ``ai-edge-litert``; XNNPACK on the CPU).

The model runs through its signature (``serving_default``, else its only
one), so inputs and outputs carry the names the exporter gave them. Integer
I/O (a full-integer int8 model) is handled here: float32 batches are
quantized with the input tensor's scale and zero point, integer outputs
dequantized with theirs, so the session always sees float32. The layout of the
input is the model's (the contract says NHWC for fan-edge's exports; the
session transposes). The contract inside the file is a ``Model.metadata``
entry (:data:`~fan_edge.runtime.contract.METADATA_KEY`), read with the TFLite
flatbuffer schema that ships in ai-edge-litert.

``extra_outputs`` (intermediate tensors by name, for the export's parity
report) builds the interpreter with ``experimental_preserve_all_tensors``,
which runs TFLite's built-in kernels instead of XNNPACK: numerically the
same model, not the fast path.

Devices: ``cpu`` is XNNPACK. ``gpu`` and ``npu`` are TFLite delegates loaded
with ``load_delegate``, the way boards ship them: the GPU delegate
(``libtensorflowlite_gpu_delegate.so``) and NPU vendors' delegates (NXP's
``libvx_delegate.so``, Qualcomm's ``libQnnTFLiteDelegate.so``), found on the
library path, or the files named by ``$FAN_EDGE_LITERT_GPU_DELEGATE`` /
``$FAN_EDGE_LITERT_NPU_DELEGATE``. A device is present when its delegate
library loads and has TFLite's external-delegate entry point. ``auto`` takes
gpu, then npu, then cpu, moving on when a delegate fails to start. (The ai-edge-litert
wheel's own accelerators belong to its newer CompiledModel API, which this
backend does not use; on this project's machines its GPU accelerator finds
no adapter.)

Threads: an interpreter holds its tensors and is not thread-safe. On the CPU
``run`` takes one from a pool (made on demand, at most as many as calls in
flight at once), so threads run in parallel; a delegate owns device state and
a context bound to its interpreter, so gpu and npu keep a single interpreter
and calls take turns.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from pathlib import Path

import numpy as np

from ...errors import BackendError, first_line
from . import Backend, TensorInfo, check_tensor_bytes, device_error
from .pool import InstancePool

SIGNATURE = "serving_default"

# Delegate libraries by device: an environment variable naming a file, then names searched on the library path.
DELEGATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gpu": ("FAN_EDGE_LITERT_GPU_DELEGATE", ("libtensorflowlite_gpu_delegate.so",)),
    "npu": ("FAN_EDGE_LITERT_NPU_DELEGATE", ("libvx_delegate.so", "libQnnTFLiteDelegate.so")),
}
AUTO_ORDER = ("gpu", "npu", "cpu")


def delegate_library(device: str) -> str | None:
    """The delegate library for ``device`` ("gpu" or "npu") that loads here, or None."""
    variable, names = DELEGATES[device]
    candidates = [os.environ[variable]] if os.environ.get(variable) else list(names)
    for name in candidates:
        # Check it loads and has TFLite's external-delegate entry point before load_delegate, whose failures
        # leave half-built objects behind.
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        if hasattr(library, "tflite_plugin_create_delegate"):
            return name
    return None


# The custom operator Arm's Vela puts in place of what runs on an Ethos-U NPU: no interpreter here can run it.
ETHOS_U_OP = b"ethos-u"
# A TFLite model is a FlatBuffer whose file identifier (bytes 4 to 8) is this.
TFLITE_IDENTIFIER = b"TFL3"


def check_tflite_file(path: Path) -> None:
    """A cheap look before the interpreter reads ``path``: a TFLite FlatBuffer names itself "TFL3" in bytes 4..8.

    The interpreter verifies the FlatBuffer itself; this gives the clear
    message for the common case (a file of another format, an empty or cut
    file) and keeps those away from native code altogether.
    """
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        raise BackendError(f"{path}: not a TFLite model (no TFL3 FlatBuffer identifier)")


# Kernel parameters beyond this are no FAN's (its largest: a 7x7 convolution, 2x2 pools, stride 2). XNNPACK sizes
# buffers by them when the interpreter first allocates: fuzzing found a 2 kB file whose average pool, 117 million
# wide, took 3.6 GB. Declared tensor shapes are checked too (check_tensor_bytes).
MAX_KERNEL_PARAMETER = 64
_KERNEL_OPTIONS = {
    "Pool2DOptions": ("FilterWidth", "FilterHeight", "StrideW", "StrideH"),
    "Conv2DOptions": ("StrideW", "StrideH", "DilationWFactor", "DilationHFactor"),
    "DepthwiseConv2DOptions": ("StrideW", "StrideH", "DilationWFactor", "DilationHFactor", "DepthMultiplier"),
    "TransposeConvOptions": ("StrideW", "StrideH"),
}


def check_kernel_parameters(path: Path) -> None:
    """Refuse pooling windows, strides and dilations over :data:`MAX_KERNEL_PARAMETER` before anything is allocated.

    Read with the TFLite schema that ships in ai-edge-litert, after the
    interpreter has verified the FlatBuffer (so the reader walks a sound one).
    """
    from ai_edge_litert import schema_py_generated as schema

    kinds = {getattr(schema.BuiltinOptions, name): (getattr(schema, name), fields) for name, fields in _KERNEL_OPTIONS.items()}
    try:
        model = schema.Model.GetRootAs(path.read_bytes(), 0)
        for c in range(model.OperatorCodesLength()):
            custom = model.OperatorCodes(c).CustomCode()
            if custom == ETHOS_U_OP:
                raise BackendError(f"{path}: compiled by Vela for an Arm Ethos-U NPU (custom op ethos-u): it runs under "
                                   "TensorFlow Lite Micro with the Ethos-U driver; run the portable .tflite it was compiled from")
        for g in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(g)
            for i in range(subgraph.OperatorsLength()):
                op = subgraph.Operators(i)
                kind, table = kinds.get(op.BuiltinOptionsType()), op.BuiltinOptions()
                if kind is None or table is None:
                    continue
                options = kind[0]()
                options.Init(table.Bytes, table.Pos)
                for field in kind[1]:
                    value = getattr(options, field)()
                    if not 0 <= value <= MAX_KERNEL_PARAMETER:
                        raise BackendError(
                            f"{path}: operator {i} has {field} {value} (more than {MAX_KERNEL_PARAMETER}): not a FAN, "
                            "refused before allocating for it"
                        )
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"{path}: cannot read its operators ({first_line(exc, 200)})") from None


def _quant(details: dict) -> tuple[float, int] | None:
    """(scale, zero point) of an integer tensor, None for a float one."""
    if np.dtype(details["dtype"]).kind == "f":
        return None
    q = details.get("quantization_parameters") or {}
    scales, zeros = np.asarray(q.get("scales", [])), np.asarray(q.get("zero_points", []))
    if scales.size != 1 or zeros.size != 1:
        scale, zero = details.get("quantization", (0.0, 0))
        if not scale:
            raise BackendError(f"integer tensor {details.get('name')!r} has no per-tensor scale and zero point")
        return float(scale), int(zero)
    return float(scales[0]), int(zeros[0])


def _dequantize(value: np.ndarray, quant: tuple[float, int] | None) -> np.ndarray:
    if quant is None:
        return np.asarray(value, dtype=np.float32)
    scale, zero = quant
    return ((np.asarray(value, dtype=np.float32) - zero) * scale).astype(np.float32)


class LiteRTBackend(Backend):
    name = "litert"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None, extra_outputs: tuple[str, ...] = ()):
        super().__init__(path, device, threads, extra_outputs)
        check_tflite_file(self.path)
        present = self.devices()
        if device == "auto":
            candidates = [d for d in AUTO_ORDER if d in present]
        elif device in present:
            candidates = [device]
        else:
            raise device_error("litert", device, present, "" if device in AUTO_ORDER else "not a device name it knows: cpu, gpu, npu")
        reasons = []
        for target in candidates:
            if target != "cpu" and self.extra_outputs:
                reasons.append(f"{target}: intermediate tensors are readable on the cpu only")
                continue
            self._library = delegate_library(target) if target != "cpu" else None
            try:
                first = self._interpreter()
                break
            except BackendError as exc:
                if target == "cpu":
                    raise
                reasons.append(f"{target}: {exc}")
        else:
            raise device_error("litert", device, present, "; ".join(reasons))
        interpreter, runner, self.signature = first
        self.device = target
        try:
            self._inputs = runner.get_input_details()
            self._outputs = runner.get_output_details()
            tensors = interpreter.get_tensor_details()
        except Exception as exc:  # names in a hostile file may not even be UTF-8
            raise BackendError(f"{self.path}: LiteRT cannot describe its inputs and outputs ({first_line(exc, 200)})") from None
        for d in tensors:  # the interpreter allocates every tensor on the first run, whatever its declared size
            check_tensor_bytes(self.path, d["name"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).itemsize)
        check_kernel_parameters(self.path)
        if len(self._inputs) != 1:
            raise BackendError(f"{self.path}: expected one input, the signature has {len(self._inputs)}")
        self._extra: dict[str, dict] = {}
        if self.extra_outputs:
            by_name = {d["name"]: d for d in tensors}
            for name in self.extra_outputs:
                if name in self._outputs:
                    continue
                if name not in by_name:
                    raise BackendError(f"{self.path}: no tensor named {name!r} in the graph")
                self._extra[name] = by_name[name]
        self._pool: InstancePool = InstancePool(self._interpreter, limit=None if target == "cpu" else 1)
        self._pool.add(first)

    def _interpreter(self) -> tuple:
        """A new interpreter on this backend's device, its signature runner and the signature's name."""
        from ai_edge_litert.interpreter import Interpreter, OpResolverType, load_delegate

        probe = bool(self.extra_outputs)
        try:
            delegates = [load_delegate(self._library)] if self._library else None
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")  # asked for, knowingly
                interpreter = Interpreter(
                    model_path=str(self.path),
                    num_threads=self.threads,
                    experimental_delegates=delegates,
                    # Intermediate tensors exist only outside delegates: no XNNPACK when some are asked for.
                    experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if probe else OpResolverType.AUTO,
                    experimental_preserve_all_tensors=probe,
                )
            signatures = interpreter.get_signature_list()
            if not signatures:
                raise BackendError(f"{self.path}: the model has no signature (export it with fan-export)")
            signature = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
            return interpreter, interpreter.get_signature_runner(signature), signature
        except BackendError:
            raise
        except Exception as exc:  # the interpreter raises ValueError / RuntimeError with native text
            raise BackendError(f"{self.path}: LiteRT cannot load it ({first_line(exc, 200)})") from None

    @classmethod
    def devices(cls) -> list[str]:
        """cpu, plus gpu and npu where their delegate library loads; best first."""
        return [d for d in AUTO_ORDER if d == "cpu" or delegate_library(d) is not None]

    @property
    def _input(self) -> tuple[str, dict]:
        (name, details), = self._inputs.items()
        return name, details

    @property
    def inputs(self) -> list[TensorInfo]:
        name, d = self._input
        return [TensorInfo(name, tuple(int(s) if s >= 0 else None for s in d["shape_signature"]), np.dtype(d["dtype"]).name)]

    @property
    def outputs(self) -> list[TensorInfo]:
        dynamic = self.dynamic_batch
        infos = []
        for name, d in self._outputs.items():
            shape = [int(s) if s >= 0 else None for s in d["shape_signature"]]
            if dynamic and shape:
                shape[0] = None  # the converter records the example's batch for outputs; it follows the input's
            infos.append(TensorInfo(name, tuple(shape), np.dtype(d["dtype"]).name))
        return infos

    @property
    def engine_objects(self) -> int:
        """Interpreters in the pool (idle or in use)."""
        return self._pool.size

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        name, d = self._input
        x = np.ascontiguousarray(batch, dtype=np.float32)
        quant = _quant(d)
        if quant is not None:
            scale, zero = quant
            info = np.iinfo(np.dtype(d["dtype"]))
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(d["dtype"])
        with self._pool.take() as (interpreter, runner, _):
            try:
                results = runner(**{name: x})
            except Exception as exc:
                raise BackendError(f"{self.path}: LiteRT failed to run a batch of shape {x.shape} ({first_line(exc, 200)})") from None
            # Copies: the runner's outputs and tensors belong to the interpreter, which the next call reuses.
            out = {k: _dequantize(np.array(v, copy=True), _quant(self._outputs[k])) for k, v in results.items()}
            for extra, details in self._extra.items():
                value = interpreter.get_tensor(details["index"])
                out[extra] = _dequantize(np.array(value, copy=True), _quant(details))
        return out

    def metadata(self) -> dict[str, str]:
        """The model's ``Model.metadata`` entries that are UTF-8 text (binary ones, e.g. the converter's, are skipped)."""
        from ai_edge_litert import schema_py_generated as schema

        data = self.path.read_bytes()
        try:
            model = schema.Model.GetRootAs(data, 0)
            entries = {}
            for i in range(model.MetadataLength()):
                entry = model.Metadata(i)
                name = (entry.Name() or b"").decode("utf-8", "replace")
                buffer = model.Buffers(entry.Buffer())
                if buffer.Offset() > 1:  # large models keep buffers after the flatbuffer
                    raw = data[buffer.Offset() : buffer.Offset() + buffer.Size()]
                else:
                    raw = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
                try:
                    entries[name] = raw.decode("utf-8")
                except UnicodeDecodeError:
                    continue
            return entries
        except Exception as exc:
            raise BackendError(f"{self.path}: cannot read its metadata ({first_line(exc, 200)})") from None

    def close(self) -> None:
        self._pool.clear()
