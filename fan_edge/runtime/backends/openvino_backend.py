"""OpenVINO backend (IR ``.xml`` + ``.bin``, or ONNX read directly).

OpenVINO's CPU plugin runs bf16 by default on CPUs that support it (AVX-512
BF16, AMX); that costs accuracy, so this backend asks for f32 unless told
otherwise (``precision_hint``): the accuracy an export reports is the one an
app gets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BackendError
from ..contract import METADATA_KEY, RT_INFO_PATH
from . import Backend, TensorInfo


def _dims(partial_shape) -> tuple[int | None, ...]:
    return tuple(d.get_length() if d.is_static else None for d in partial_shape)


def _info(port) -> TensorInfo:
    return TensorInfo(port.get_any_name(), _dims(port.get_partial_shape()), port.get_element_type().to_dtype().name)


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        extra_outputs: tuple[str, ...] = (),
        precision_hint: str | None = "f32",
    ):
        super().__init__(path, device, threads, extra_outputs)
        import openvino as ov

        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line text
            raise BackendError(f"{self.path}: OpenVINO cannot read it ({str(exc).strip().splitlines()[0][:200]})") from None
        for name in self.extra_outputs:
            if name in self._output_names():
                continue
            try:
                self.model.add_outputs(name)
            except Exception:
                raise BackendError(f"{self.path}: no tensor named {name!r} in the graph") from None
        config: dict[str, object] = {}
        if precision_hint:
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = self.core.compile_model(self.model, "CPU", config)
        except Exception as exc:
            raise BackendError(f"{self.path}: OpenVINO cannot compile it ({str(exc).strip().splitlines()[0][:200]})") from None
        self.request = self.compiled.create_infer_request()

    def _output_names(self) -> list[str]:
        return [o.get_any_name() for o in self.model.outputs]

    @classmethod
    def devices(cls) -> list[str]:
        import openvino as ov

        return [d.lower() for d in ov.Core().available_devices]

    @property
    def inputs(self) -> list[TensorInfo]:
        return [_info(i) for i in self.model.inputs]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [_info(o) for o in self.model.outputs]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        results = self.request.infer([np.ascontiguousarray(batch, dtype=np.float32)])
        out = {}
        for port, value in results.items():
            out[port.get_any_name()] = np.array(value, copy=True)
        return out

    def metadata(self) -> dict[str, str]:
        meta: dict[str, str] = {}
        if self.model.has_rt_info(list(RT_INFO_PATH)):
            meta[METADATA_KEY] = self.model.get_rt_info(list(RT_INFO_PATH)).astype(str)
        return meta

    def close(self) -> None:
        self.request = None
        self.compiled = None
