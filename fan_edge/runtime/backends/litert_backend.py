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
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ...errors import BackendError
from . import Backend, TensorInfo

SIGNATURE = "serving_default"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


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

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, extra_outputs: tuple[str, ...] = ()):
        super().__init__(path, device, threads, extra_outputs)
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        probe = bool(self.extra_outputs)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")  # asked for, knowingly
                self.interpreter = Interpreter(
                    model_path=str(self.path),
                    num_threads=threads,
                    # Intermediate tensors exist only outside delegates: no XNNPACK when some are asked for.
                    experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if probe else OpResolverType.AUTO,
                    experimental_preserve_all_tensors=probe,
                )
            signatures = self.interpreter.get_signature_list()
            if not signatures:
                raise BackendError(f"{self.path}: the model has no signature (export it with fan-export)")
            self.signature = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
            self.runner = self.interpreter.get_signature_runner(self.signature)
        except BackendError:
            raise
        except Exception as exc:  # the interpreter raises ValueError / RuntimeError with native text
            raise BackendError(f"{self.path}: LiteRT cannot load it ({_first_line(exc)})") from None
        self._inputs = self.runner.get_input_details()
        self._outputs = self.runner.get_output_details()
        if len(self._inputs) != 1:
            raise BackendError(f"{self.path}: expected one input, the signature has {len(self._inputs)}")
        self._extra: dict[str, dict] = {}
        if self.extra_outputs:
            by_name = {d["name"]: d for d in self.interpreter.get_tensor_details()}
            for name in self.extra_outputs:
                if name in self._outputs:
                    continue
                if name not in by_name:
                    raise BackendError(f"{self.path}: no tensor named {name!r} in the graph")
                self._extra[name] = by_name[name]

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

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        name, d = self._input
        x = np.ascontiguousarray(batch, dtype=np.float32)
        quant = _quant(d)
        if quant is not None:
            scale, zero = quant
            info = np.iinfo(np.dtype(d["dtype"]))
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(d["dtype"])
        try:
            results = self.runner(**{name: x})
        except Exception as exc:
            raise BackendError(f"{self.path}: LiteRT failed to run a batch of shape {x.shape} ({_first_line(exc)})") from None
        out = {k: _dequantize(v, _quant(self._outputs[k])) for k, v in results.items()}
        for extra, details in self._extra.items():
            value = self.interpreter.get_tensor(details["index"])
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
            raise BackendError(f"{self.path}: cannot read its metadata ({_first_line(exc)})") from None

    def close(self) -> None:
        self.runner = None  # type: ignore[assignment]
        self.interpreter = None  # type: ignore[assignment]
