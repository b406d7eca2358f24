"""ONNX Runtime backend: one execution provider per device.

Devices are ONNX Runtime's execution providers under short names
(:data:`PROVIDERS`): ``cpu``, ``cuda``, ``tensorrt``, ``directml``,
``migraphx``, ``rocm``, ``webgpu``, ``coreml``, ``qnn``, ``openvino``,
``vitisai``, ``cann``, ``nnapi``, ``xnnpack``. ``gpu`` and ``npu`` take the
first present provider of :data:`GPU_ORDER` / :data:`NPU_ORDER`; ``auto`` the
first of :data:`AUTO_ORDER`, which leaves out the providers that compile or
partition the graph per model (TensorRT builds an engine for minutes, QNN's
HTP wants a quantized QDQ graph, OpenVINO and Vitis AI compile) and so are
used only when named. A suffix picks a unit: ``cuda:1`` (device id),
``openvino:gpu`` (OpenVINO device type), ``qnn:gpu`` (QNN backend type).

Present means compiled into the installed onnxruntime package
(``get_available_providers``); whether the hardware answers is known only
when a session starts. ONNX Runtime then falls back to the CPU silently; this
backend checks the providers the session really got and reports a requested
device that did not start as a one-line error (``auto`` moves on to the next
candidate instead). Nodes a provider cannot run go to the CPU provider, which
is always last in the list, as ONNX Runtime recommends.

Threads: ``InferenceSession.run`` is safe to call concurrently (ONNX Runtime
serialises internally for providers that declare they cannot run
concurrently, DirectML among them), so one session serves every thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import BackendError
from ..cache import cache_dir
from . import Backend, TensorInfo, device_error

_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
}


@dataclass(frozen=True)
class Provider:
    """An execution provider under its fan-edge device name; ``unit`` is the option a ``name:X`` suffix sets."""

    provider: str
    unit: str | None = None  # provider option set by the suffix, e.g. device_id
    options: dict[str, str] = field(default_factory=dict)
    with_cuda: bool = False  # TensorRT hands what it cannot run to CUDA before the CPU


PROVIDERS: dict[str, Provider] = {
    "cpu": Provider("CPUExecutionProvider"),
    "cuda": Provider("CUDAExecutionProvider", "device_id"),
    "tensorrt": Provider("TensorrtExecutionProvider", "device_id", {"trt_engine_cache_enable": "True"}, with_cuda=True),
    "directml": Provider("DmlExecutionProvider", "device_id"),
    "migraphx": Provider("MIGraphXExecutionProvider", "device_id"),
    "rocm": Provider("ROCMExecutionProvider", "device_id"),
    "webgpu": Provider("WebGpuExecutionProvider"),
    "coreml": Provider("CoreMLExecutionProvider", "MLComputeUnits"),
    "qnn": Provider("QNNExecutionProvider", "backend_type", {"backend_type": "htp"}),
    "openvino": Provider("OpenVINOExecutionProvider", "device_type"),
    "vitisai": Provider("VitisAIExecutionProvider"),
    "cann": Provider("CANNExecutionProvider", "device_id"),
    "nnapi": Provider("NnapiExecutionProvider"),
    "xnnpack": Provider("XnnpackExecutionProvider"),
}
GPU_ORDER = ("cuda", "directml", "migraphx", "rocm", "webgpu", "coreml")
NPU_ORDER = ("qnn", "coreml", "vitisai", "cann", "nnapi")
AUTO_ORDER = ("cuda", "directml", "migraphx", "rocm", "coreml", "cpu")
_BY_PROVIDER = {p.provider: name for name, p in PROVIDERS.items()}
# Option values a suffix takes as written by ONNX Runtime's documentation (upper case for OpenVINO, etc.).
_UNIT_CASE = {"device_type": str.upper, "MLComputeUnits": lambda v: {"all": "ALL", "cpuandgpu": "CPUAndGPU",
              "cpuandneuralengine": "CPUAndNeuralEngine", "cpuonly": "CPUOnly"}.get(v, v)}


def _available() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _provider_list(name: str, unit: str | None) -> list[tuple[str, dict[str, str]]]:
    """The providers argument for device ``name`` (with its ``:unit`` suffix): it, then the fallbacks."""
    p = PROVIDERS[name]
    options = dict(p.options)
    if unit is not None:
        if p.unit is None:
            raise BackendError(f"device {name} takes no ':' suffix")
        if p.unit == "device_id" and not unit.isdigit():
            raise BackendError(f"device {name}:{unit}: the suffix is a device number, e.g. {name}:0")
        options[p.unit] = _UNIT_CASE.get(p.unit, str)(unit)
    if name == "tensorrt":
        options.setdefault("trt_engine_cache_path", str(cache_dir("tensorrt")))
    chain = [(p.provider, options)]
    if p.with_cuda:
        cuda_options = {"device_id": options["device_id"]} if "device_id" in options else {}
        chain.append((PROVIDERS["cuda"].provider, cuda_options))
    if p.provider != "CPUExecutionProvider":
        chain.append(("CPUExecutionProvider", {}))
    return chain


# onnxruntime's messages embed the C++ source location and signature ("/onnxruntime_src/...model.cc:256
# onnxruntime::Model::Model(onnx::ModelProto&&, ...) Unsupported model IR version"): noise to a user.
_SOURCE = re.compile(r"[\w./-]+\.(?:cc|cpp|h):\d+ (?:[\w:~<>]+\([^)]*\)(?: const)? )?")


def _first_line(exc: BaseException) -> str:
    text = _SOURCE.sub("", str(exc)).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _dims(shape) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def _candidates(device: str, present: list[str]) -> list[tuple[str, str | None]]:
    """(device name, suffix) pairs to try in order for what the caller asked."""
    base, sep, unit = device.partition(":")
    suffix = unit if sep else None
    if device == "auto":
        return [(n, None) for n in AUTO_ORDER if n in present]
    if base in ("gpu", "npu"):
        order = GPU_ORDER if base == "gpu" else NPU_ORDER
        found = [(n, suffix if PROVIDERS[n].unit == "device_id" else None) for n in order if n in present]
        if not found:
            raise device_error("onnxruntime", device, present, f"no {base.upper()} execution provider is installed")
        return found
    if base not in PROVIDERS:
        raise device_error("onnxruntime", device, present, f"not a device name it knows: gpu, npu, {', '.join(PROVIDERS)}")
    if base not in present:
        raise device_error("onnxruntime", device, present)
    return [(base, suffix)]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None, extra_outputs: tuple[str, ...] = ()):
        super().__init__(path, device, threads, extra_outputs)
        import onnxruntime as ort

        self._ort = ort
        model: str | bytes = str(self.path)
        if self.extra_outputs:
            model = self._with_outputs(self.extra_outputs)
        present = self.devices()
        reasons: list[str] = []
        for name, unit in _candidates(device, present):
            chain = _provider_list(name, unit)
            try:
                session = ort.InferenceSession(
                    model, self._options(name), providers=[p for p, _ in chain], provider_options=[o for _, o in chain]
                )
            except Exception as exc:  # onnxruntime raises its own untyped errors
                if name == "cpu" or not self._loads_on_cpu(model):
                    raise BackendError(f"{self.path}: onnxruntime cannot load it ({_first_line(exc)})") from None
                reasons.append(f"{name}: {_first_line(exc)}")
                continue
            if session.get_providers()[0] != chain[0][0]:  # onnxruntime fell back to the CPU
                reasons.append(f"{name}: its execution provider did not start")
                continue
            self.session = session
            self.device = name if unit is None else f"{name}:{unit}"
            self._describe()
            return
        raise device_error("onnxruntime", device, present, "; ".join(reasons) or "nothing to try")

    def _describe(self) -> None:
        """Read the graph's inputs and outputs once, at load: names in a hostile file may not even be UTF-8."""
        try:
            self._inputs = [TensorInfo(i.name, _dims(i.shape), _TYPES.get(i.type, i.type)) for i in self.session.get_inputs()]
            self._outputs = [TensorInfo(o.name, _dims(o.shape), _TYPES.get(o.type, o.type)) for o in self.session.get_outputs()]
        except Exception as exc:
            raise BackendError(f"{self.path}: onnxruntime cannot describe its inputs and outputs ({_first_line(exc)})") from None

    def _options(self, name: str):
        options = self._ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        if name == "directml":  # required by the DirectML provider
            options.enable_mem_pattern = False
            options.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        return options

    def _loads_on_cpu(self, model: str | bytes) -> bool:
        """Whether the model itself is sound (so that a failure elsewhere is the device's)."""
        try:
            self._ort.InferenceSession(model, self._options("cpu"), providers=["CPUExecutionProvider"])
        except Exception:
            return False
        return True

    def _with_outputs(self, names: tuple[str, ...]) -> bytes:
        """The model with intermediate tensors ``names`` added as graph outputs (needs the onnx package)."""
        try:
            import onnx
        except ImportError:
            raise BackendError("exposing intermediate tensors needs the onnx package: pip install 'fan-edge[onnx]'") from None
        try:
            model = onnx.load(str(self.path))
        except Exception as exc:  # protobuf's DecodeError and friends
            raise BackendError(f"{self.path}: not a readable ONNX model ({_first_line(exc)})") from None
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
        """Installed execution providers by fan-edge name, in onnxruntime's priority order (the Azure one, a remote endpoint, is not a device)."""
        return [_BY_PROVIDER[p] for p in _available() if p in _BY_PROVIDER]

    @property
    def inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self._outputs]
        x = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            results = self.session.run(names, {self._inputs[0].name: x})
        except Exception as exc:  # onnxruntime's own untyped errors (a shape the graph refuses, a kernel failing)
            raise BackendError(
                f"{self.path}: onnxruntime failed to run a batch of shape {x.shape} ({_first_line(exc)})"
            ) from None
        return dict(zip(names, results))

    def metadata(self) -> dict[str, str]:
        try:
            return dict(self.session.get_modelmeta().custom_metadata_map)
        except Exception as exc:  # e.g. metadata that is not UTF-8
            raise BackendError(f"{self.path}: cannot read its metadata ({_first_line(exc)})") from None

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
