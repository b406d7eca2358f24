"""ONNX Runtime backend (CPU execution provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BackendError
from . import Backend, TensorInfo

_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
}

# Execution providers by the device names fan-edge uses (listed in errors; only CPU is wired up).
_PROVIDER_DEVICES = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
    "OpenVINOExecutionProvider": "openvino",
    "QNNExecutionProvider": "qnn",
    "CoreMLExecutionProvider": "coreml",
    "NnapiExecutionProvider": "nnapi",
    "DmlExecutionProvider": "directml",
}


def _dims(shape) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, extra_outputs: tuple[str, ...] = ()):
        super().__init__(path, device, threads, extra_outputs)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        model: str | bytes = str(self.path)
        if self.extra_outputs:
            model = self._with_outputs(self.extra_outputs)
        try:
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BackendError(f"{self.path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None

    def _with_outputs(self, names: tuple[str, ...]) -> bytes:
        """The model with intermediate tensors ``names`` added as graph outputs (needs the onnx package)."""
        try:
            import onnx
        except ImportError:
            raise BackendError("exposing intermediate tensors needs the onnx package: pip install 'fan-edge[onnx]'") from None
        model = onnx.load(str(self.path))
        produced = {o for node in model.graph.node for o in node.output}
        existing = {o.name for o in model.graph.output}
        for name in names:
            if name in existing:
                continue
            if name not in produced:
                raise BackendError(f"{self.path}: no tensor named {name!r} in the graph")
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        return model.SerializeToString()

    @classmethod
    def devices(cls) -> list[str]:
        import onnxruntime as ort

        # The Azure provider calls remote endpoints: not a device.
        return [_PROVIDER_DEVICES.get(p, p) for p in ort.get_available_providers() if p != "AzureExecutionProvider"]

    @property
    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo(i.name, _dims(i.shape), _TYPES.get(i.type, i.type)) for i in self.session.get_inputs()]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [TensorInfo(o.name, _dims(o.shape), _TYPES.get(o.type, o.type)) for o in self.session.get_outputs()]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        results = self.session.run(names, {self.session.get_inputs()[0].name: np.ascontiguousarray(batch, dtype=np.float32)})
        return dict(zip(names, results))

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
