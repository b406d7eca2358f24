"""OpenVINO backend (IR ``.xml`` + ``.bin``, or ONNX read directly).

Devices are OpenVINO's own (``Core().available_devices``: ``CPU``, ``GPU``,
``GPU.0``, ``GPU.1``, ``NPU``), named in lower case. ``gpu`` takes a discrete
GPU before an integrated one; ``auto`` follows the priority of OpenVINO's
AUTO plugin (discrete GPU, integrated GPU, CPU; the next one when a device
fails to compile the model) and, like it, leaves the NPU out: the NPU plugin compiles static shapes only, so a model loaded on ``npu``
is reshaped to batch 1 (the session then feeds it face by face).

OpenVINO's CPU plugin runs bf16 by default on CPUs that support it (AVX-512
BF16, AMX) and the GPU plugin runs f16; that costs accuracy, so this backend
asks for f32 on both unless told otherwise (``precision_hint``): the accuracy
an export reports is the one an app gets. The NPU computes in f16 whatever
is asked, so it gets no hint.

Threads: a compiled model is shared, but an infer request holds its tensors
and must serve one call at a time. ``run`` takes a request from a pool (one
more is created only when every existing one is busy), so concurrent calls
run in parallel without sharing a request and the number of requests stays
at the peak number of calls in flight.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import BackendError, first_line
from ..contract import METADATA_KEY, RT_INFO_PATH
from . import Backend, TensorInfo, check_tensor_bytes, device_error
from .pool import InstancePool

# The lines of source locations an OpenVINO error starts with ("Exception from src/...cpp:84:",
# "Check '...' failed at ...:"), which say nothing to a user.
_LOCATION = re.compile(r"^[ \t]*(Exception from \S+:\d+:|Check '.*' failed at \S+:\d+:)[ \t]*$", re.MULTILINE)


def _error_line(exc: BaseException) -> str:
    """The informative line of an OpenVINO error (at most 200 characters), after its source locations."""
    return first_line(exc, 200, drop=_LOCATION)


# What an IR's .xml may start with (after a UTF-8 byte-order mark and white space): a tag or a declaration.
_XML_START = re.compile(rb"^(\xef\xbb\xbf)?\s*<")


def check_ir_files(path: Path) -> None:
    """A cheap look before OpenVINO reads ``path``: an ``.xml`` must be XML with its ``.bin`` beside it.

    Without it, ``read_model`` offers anything that is not XML to every
    frontend it has (TensorFlow's text format, Paddle, ...), each of which
    parses it and logs to stderr, and the error names none of that.
    """
    if path.suffix.lower() != ".xml":
        return
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not _XML_START.match(head):
        raise BackendError(f"{path}: not an OpenVINO IR (an .xml file that is not XML)")
    if not path.with_suffix(".bin").is_file():
        raise BackendError(f"{path}: its weights file {path.with_suffix('.bin').name} is missing")


def _available(core) -> list[str]:
    return list(core.available_devices)


def _is_discrete(core, device: str) -> bool:
    try:
        return str(core.get_property(device, "DEVICE_TYPE")).lower().endswith("discrete")
    except Exception:  # a plugin without the property: treat as integrated
        return False


def _ranked(core) -> list[str]:
    """Present devices best first, in OpenVINO names: discrete GPUs, integrated GPUs, CPU, then the rest (NPU)."""
    present = _available(core)
    gpus = [d for d in present if d.upper().startswith("GPU")]
    gpus.sort(key=lambda d: not _is_discrete(core, d))
    rest = [d for d in present if d not in gpus and d.upper() != "CPU"]
    return gpus + [d for d in present if d.upper() == "CPU"] + rest


def _auto_targets(core) -> list[str]:
    """What ``auto`` tries, in order: GPUs (discrete first), then the CPU; OpenVINO's AUTO order, without the NPU."""
    targets = [d for d in _ranked(core) if d.upper().startswith(("GPU", "CPU"))]
    if not targets:
        raise device_error("openvino", "auto", [d.lower() for d in _ranked(core)], "neither a GPU nor a CPU plugin is present")
    return targets


def _resolve(core, device: str) -> str:
    """The OpenVINO device name for fan-edge's ``device``."""
    ranked = _ranked(core)
    present = [d.lower() for d in ranked]
    if device == "auto":
        return _auto_targets(core)[0]
    if device == "gpu":
        gpus = [d for d in ranked if d.upper().startswith("GPU")]
        if gpus:
            return gpus[0]
    for d in ranked:
        if d.lower() == device:
            return d
    if device == "gpu.0" and "GPU" in ranked:  # a single GPU is listed as GPU; GPU.0 is its other name
        return "GPU"
    known = device in ("cpu", "gpu", "npu") or device.startswith(("gpu.", "npu."))
    raise device_error("openvino", device, present, "" if known else "not a device name it knows: cpu, gpu, gpu.N, npu")


def _dims(partial_shape) -> tuple[int | None, ...]:
    return tuple(d.get_length() if d.is_static else None for d in partial_shape)


def _info(port) -> TensorInfo:
    return TensorInfo(port.get_any_name(), _dims(port.get_partial_shape()), port.get_element_type().to_dtype().name)


def _check_sizes(path: Path, model) -> None:
    """Refuse a graph declaring a tensor over MAX_TENSOR_BYTES before compiling it (which would allocate it)."""
    try:
        outputs = [(op.get_friendly_name(), o) for op in model.get_ordered_ops() for o in op.outputs()]
        for name, port in outputs:
            shape = port.get_partial_shape()
            if shape.rank.is_dynamic:
                continue
            dims = tuple(d.get_length() if d.is_static else -1 for d in shape)
            check_tensor_bytes(path, name, dims, max(1, (port.get_element_type().bitwidth + 7) // 8))
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"{path}: OpenVINO cannot describe its tensors ({_error_line(exc)})") from None


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        threads: int | None = None,
        extra_outputs: tuple[str, ...] = (),
        precision_hint: str | None = "f32",
    ):
        super().__init__(path, device, threads, extra_outputs)
        import openvino as ov

        self.core = ov.Core()
        targets = _auto_targets(self.core) if device == "auto" else [_resolve(self.core, device)]
        check_ir_files(self.path)
        try:
            self.model = self.core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line text
            raise BackendError(f"{self.path}: OpenVINO cannot read it ({_error_line(exc)})") from None
        _check_sizes(self.path, self.model)
        for name in self.extra_outputs:
            if name in self._output_names():
                continue
            try:
                self.model.add_outputs(name)
            except Exception:
                raise BackendError(f"{self.path}: no tensor named {name!r} in the graph") from None
        reasons = []
        for target in targets:
            try:
                self.compiled = self._compile(target, threads, precision_hint)
                break
            except BackendError as exc:
                if target.upper() == "CPU":
                    raise
                reasons.append(f"{target} failed to compile it: {exc}")
        else:
            raise device_error("openvino", device, [d.lower() for d in _ranked(self.core)], "; ".join(reasons))
        self.device = target.lower()
        try:  # read once at load: a hostile IR may have unnamed tensors or element types numpy lacks
            self._inputs = [_info(i) for i in self.model.inputs]
            self._outputs = [_info(o) for o in self.model.outputs]
        except Exception as exc:
            raise BackendError(f"{self.path}: OpenVINO cannot describe its inputs and outputs ({_error_line(exc)})") from None
        self._requests: InstancePool = InstancePool(self.compiled.create_infer_request)
        self._requests.add(self.compiled.create_infer_request())

    def _compile(self, target: str, threads: int | None, precision_hint: str | None):
        is_cpu, is_npu = target.upper() == "CPU", target.upper().startswith("NPU")
        model = self.model
        if is_npu and model.inputs[0].get_partial_shape().is_dynamic:
            model = model.clone()
            shape = model.inputs[0].get_partial_shape()
            shape[0] = 1
            try:
                model.reshape({model.inputs[0]: shape})
            except Exception as exc:
                raise BackendError(f"cannot make its input static for the NPU ({_error_line(exc)})") from None
        config: dict[str, object] = {}
        if precision_hint and not is_npu:
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        if threads is not None and is_cpu:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            compiled = self.core.compile_model(model, target, config)
        except Exception as exc:
            if is_cpu:
                raise BackendError(f"{self.path}: OpenVINO cannot compile it ({_error_line(exc)})") from None
            raise BackendError(_error_line(exc)) from None
        self.model = model
        return compiled

    def _output_names(self) -> list[str]:
        return [o.get_any_name() for o in self.model.outputs]

    @classmethod
    def devices(cls) -> list[str]:
        import openvino as ov

        return [d.lower() for d in _ranked(ov.Core())]

    @property
    def inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    @property
    def engine_objects(self) -> int:
        """Infer requests in the pool (idle or in use)."""
        return self._requests.size

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with self._requests.take() as request:
            try:
                results = request.infer([x])
            except Exception as exc:
                raise BackendError(f"{self.path}: OpenVINO failed to run a batch of shape {x.shape} ({_error_line(exc)})") from None
            # The values are views of the request's own tensors: copy before the request serves another call.
            return {port.get_any_name(): np.array(value, copy=True) for port, value in results.items()}

    def metadata(self) -> dict[str, str]:
        meta: dict[str, str] = {}
        try:
            if self.model.has_rt_info(list(RT_INFO_PATH)):
                meta[METADATA_KEY] = self.model.get_rt_info(list(RT_INFO_PATH)).astype(str)
        except Exception as exc:  # rt_info of another shape (a map where fan-edge writes a string)
            raise BackendError(f"{self.path}: cannot read its rt_info ({_error_line(exc)})") from None
        return meta

    def close(self) -> None:
        self._requests.clear()
        self.compiled = None
