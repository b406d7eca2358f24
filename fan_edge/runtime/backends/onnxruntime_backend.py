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
``openvino:gpu`` (OpenVINO device type), ``qnn:gpu`` (QNN backend type),
``qnn:57`` (the HTP's ``soc_model``, 57 = SM8650).

Qualcomm QNN: onnxruntime-qnn 2.x is not compiled into onnxruntime but ships
the provider as a plugin library, which onnxruntime lists only once it is
registered; :func:`register_qnn` does that once per process (listing the
devices calls it), and the session adds the provider for the plugin's devices
(``add_provider_for_devices``). The HTP compiles the whole graph for one
chip: its ``soc_model`` comes from the suffix, else from the model's contract
(``"qnn": {"soc_model": 57}``, written by :mod:`fan_edge.export.qnn`), else
QNN asks the chip it runs on (which only works on the phone; off it, the
emulated HTP needs a SoC). CPU fallback is disabled for QNN, so a model that
does not offload completely is a one-line error instead of a silent CPU run. On
x86 the plugin's HTP is a slow emulator (docs/npu.md): it is not listed
among the devices (nothing there to deploy to or benchmark; ``fan-bench``
reports the NPU absent), yet naming ``qnn`` or ``npu`` uses it, which is how
an NPU model's accuracy is checked off the phone.

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

import importlib.util
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import BackendError, FanEdgeError, first_line
from ..cache import cache_dir
from ..contract import MAX_JSON_BYTES, METADATA_KEY, ModelContract, read_sidecar
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

    providers = list(ort.get_available_providers())
    if qnn_emulated():  # registering listed it; an emulator is not a device to deploy to
        providers = [p for p in providers if p != QNN_PROVIDER]
    return providers


# ---- Qualcomm QNN (the onnxruntime-qnn 2.x plugin) ------------------------------------------------------

QNN_PROVIDER = "QNNExecutionProvider"
QNN_BACKEND_TYPES = ("htp", "gpu", "cpu")
_qnn_lock = threading.Lock()
_qnn_registered: list[bool] = []  # holds the one answer of register_qnn once it is known


def register_qnn() -> bool:
    """Register the onnxruntime-qnn plugin with onnxruntime, once per process; whether QNN devices are there.

    onnxruntime refuses a second registration under the same name, and several threads may open sessions at
    once, hence the lock; a registration the application made itself counts. False when the package is absent,
    its library does not load, or onnxruntime predates plugin providers (an onnxruntime built with QNN inside,
    as onnxruntime-qnn 1.x was, needs no registration: it lists the provider itself).
    """
    with _qnn_lock:
        if not _qnn_registered:
            _qnn_registered.append(_register_qnn())
        return _qnn_registered[0]


def _register_qnn() -> bool:
    import onnxruntime as ort

    try:
        if any(d.ep_name == QNN_PROVIDER for d in ort.get_ep_devices()):
            return True
        if importlib.util.find_spec("onnxruntime_qnn") is None:
            return False
        import onnxruntime_qnn

        ort.register_execution_provider_library(QNN_PROVIDER, onnxruntime_qnn.get_library_path())
        return any(d.ep_name == QNN_PROVIDER for d in ort.get_ep_devices())
    except Exception:  # an onnxruntime without the plugin API, or a library that does not load: no QNN
        return False


def qnn_ep_devices(backend_type: str = "htp") -> list:
    """The plugin's ``OrtEpDevice`` entries for a QNN backend type (empty without the plugin).

    On a Snapdragon the HTP appears as an NPU device and the Adreno as a GPU one; on x86 the plugin lists one
    CPU-type device, behind which its HTP backend is an emulator: when no device of the matching kind exists,
    every QNN device is returned and QNN's own ``backend_type`` option decides.
    """
    if not register_qnn():
        return []
    import onnxruntime as ort

    devices = [d for d in ort.get_ep_devices() if d.ep_name == QNN_PROVIDER]
    kind = {"htp": "NPU", "gpu": "GPU", "cpu": "CPU"}.get(backend_type)
    matching = [d for d in devices if kind is not None and d.device.type == getattr(ort.OrtHardwareDeviceType, kind, None)]
    return matching or devices


def qnn_emulated() -> bool:
    """Whether the QNN plugin is here without Qualcomm hardware: its only devices are CPU-type (the x86 emulator)."""
    if not register_qnn():
        return False
    import onnxruntime as ort

    kinds = {d.device.type for d in ort.get_ep_devices() if d.ep_name == QNN_PROVIDER}
    return bool(kinds) and kinds <= {ort.OrtHardwareDeviceType.CPU}


def _qnn_unit(unit: str) -> dict[str, str]:
    """The QNN option a ``qnn:X`` suffix sets: a backend type, or a number for the HTP's ``soc_model``."""
    if unit in QNN_BACKEND_TYPES:
        return {"backend_type": unit}
    if unit.isdigit() and 0 < int(unit) < 10_000:
        return {"soc_model": str(int(unit))}
    raise BackendError(
        f"device qnn:{unit}: the suffix is a QNN backend type ({', '.join(QNN_BACKEND_TYPES)}) "
        "or the HTP's soc_model number, e.g. qnn:57 for SM8650"
    )


def contract_soc_model(path: Path) -> int | None:
    """The HTP ``soc_model`` the model was exported or compiled for (its contract's ``qnn.soc_model``), if any.

    Read before the session exists (the provider needs it to compile the graph): from the sidecar, else from the
    ONNX metadata without loading the graph. A malformed contract gives None here; the session that reads the
    contract after loading reports it.
    """
    try:
        contract = read_sidecar(path)
        if contract is None:
            text = onnx_metadata(path, METADATA_KEY).get(METADATA_KEY)
            contract = ModelContract.from_json(text) if text is not None else None
    except FanEdgeError:
        return None
    qnn = contract.extra.get("qnn") if contract is not None else None
    soc = qnn.get("soc_model") if isinstance(qnn, dict) else None
    if isinstance(soc, int) and not isinstance(soc, bool) and 0 < soc < 10_000:
        return soc
    return None


def _varint(data, limit: int) -> int | None:
    """A protobuf varint from a file or BytesIO, None if truncated or malformed."""
    value = shift = 0
    while shift < 64:
        byte = data.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value if value <= limit else None
        shift += 7
    return None


def onnx_metadata(path: str | Path, key: str | None = None) -> dict[str, str]:
    """``metadata_props`` of an ONNX file (``key`` alone if given), skipping the graph instead of parsing it.

    A ModelProto's top-level fields are read one by one and every field but metadata_props (number 14) is
    seeked over, so that a model of hundreds of MB (or an EPContext model carrying a compiled binary) costs a
    few reads, and no onnx package is needed. A file that is not protobuf gives what was read before the
    damage (often nothing): the session that loads it reports the damage.
    """
    import io

    found: dict[str, str] = {}
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            for _ in range(100_000):  # a ModelProto has a dozen top-level fields; this bounds a hostile file
                if fh.tell() >= size:
                    break
                tag = _varint(fh, 1 << 32)
                if tag is None:
                    break
                wire = tag & 7
                if wire == 0:
                    if _varint(fh, 1 << 64) is None:
                        break
                elif wire in (1, 5):
                    fh.seek(8 if wire == 1 else 4, 1)
                elif wire == 2:
                    n = _varint(fh, size)
                    if n is None or fh.tell() + n > size:
                        break
                    if tag >> 3 != 14 or n > MAX_JSON_BYTES + 4096:
                        fh.seek(n, 1)
                        continue
                    entry = io.BytesIO(fh.read(n))
                    fields: dict[int, bytes] = {}
                    while entry.tell() < n:
                        t = _varint(entry, 1 << 32)
                        m = _varint(entry, n) if t is not None and t & 7 == 2 else None
                        if m is None:
                            break
                        fields[t >> 3] = entry.read(m)
                    name = fields.get(1, b"").decode("utf-8", "replace")
                    if key is None or name == key:
                        found[name] = fields.get(2, b"").decode("utf-8", "replace")
                else:
                    break
    except OSError:
        return found
    return found


def _provider_list(name: str, unit: str | None) -> list[tuple[str, dict[str, str]]]:
    """The providers argument for device ``name`` (with its ``:unit`` suffix): it, then the fallbacks."""
    p = PROVIDERS[name]
    options = dict(p.options)
    if unit is not None:
        if p.unit is None:
            raise BackendError(f"device {name} takes no ':' suffix")
        if p.unit == "device_id" and not unit.isdigit():
            raise BackendError(f"device {name}:{unit}: the suffix is a device number, e.g. {name}:0")
        if name == "qnn":
            options.update(_qnn_unit(unit))
        else:
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


def onnxruntime_error_line(exc: BaseException) -> str:
    """An onnxruntime error in one line (at most 300 characters), without its C++ source locations."""
    return first_line(exc, 300, drop=_SOURCE)


def _qnn_reason(exc: BaseException, options: dict[str, str]) -> str:
    """Why QNN did not take the model, in words a user can act on."""
    text = onnxruntime_error_line(exc)
    if "fallback to CPU EP has been explicitly disabled" in text:
        text = (
            "QNN does not run every node and CPU fallback is off for it: it needs a fixed batch and ops it supports "
            "(fan_edge.export.qnn.check_offload lists the nodes)"
        )
    if options.get("backend_type", "htp") == "htp" and "soc_model" not in options:
        text += (
            "; no SoC given (no qnn.soc_model in the model's contract, no qnn:NUMBER suffix): off the phone the HTP "
            "emulator needs one, e.g. qnn:57 for SM8650"
        )
    return text


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
        if base == "npu" and "qnn" not in present and qnn_emulated():
            found.append(("qnn", None))  # named, the emulated HTP serves (accuracy checks off the phone)
        if not found:
            raise device_error("onnxruntime", device, present, f"no {base.upper()} execution provider is installed")
        return found
    if base not in PROVIDERS:
        raise device_error("onnxruntime", device, present, f"not a device name it knows: gpu, npu, {', '.join(PROVIDERS)}")
    if base not in present and not (base == "qnn" and qnn_emulated()):
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
                if name == "qnn":
                    session = self._qnn_session(model, chain[0][1])
                else:
                    session = ort.InferenceSession(
                        model, self._options(name), providers=[p for p, _ in chain], provider_options=[o for _, o in chain]
                    )
            except FanEdgeError:
                raise
            except Exception as exc:  # onnxruntime raises its own untyped errors
                why = _qnn_reason(exc, chain[0][1]) if name == "qnn" else onnxruntime_error_line(exc)
                if name == "cpu" or not self._loads_on_cpu(model):
                    raise BackendError(f"{self.path}: onnxruntime cannot load it ({why})") from None
                reasons.append(f"{name}{' (emulated HTP)' if name == 'qnn' and qnn_emulated() else ''}: {why}")
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
            raise BackendError(f"{self.path}: onnxruntime cannot describe its inputs and outputs ({onnxruntime_error_line(exc)})") from None

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

    def _qnn_session(self, model: str | bytes, options: dict[str, str]):
        """A session on QNN with CPU fallback disabled, the SoC taken from the contract unless the suffix named one."""
        options = dict(options)
        if options.get("backend_type", "htp") == "htp" and "soc_model" not in options:
            soc = contract_soc_model(self.path)
            if soc is not None:
                options["soc_model"] = str(soc)
        session_options = self._options("qnn")
        session_options.log_severity_level = 4  # QNN logs its refusals as errors; the BackendError says it in one line
        session_options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        devices = qnn_ep_devices(options.get("backend_type", "htp"))
        if devices:
            session_options.add_provider_for_devices(devices, options)
            return self._ort.InferenceSession(model, session_options)
        # an onnxruntime with QNN built in (onnxruntime-qnn 1.x): the classic providers list
        return self._ort.InferenceSession(model, session_options, providers=[QNN_PROVIDER], provider_options=[options])

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
            raise BackendError(f"{self.path}: not a readable ONNX model ({onnxruntime_error_line(exc)})") from None
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
                f"{self.path}: onnxruntime failed to run a batch of shape {x.shape} ({onnxruntime_error_line(exc)})"
            ) from None
        return dict(zip(names, results))

    def metadata(self) -> dict[str, str]:
        try:
            return dict(self.session.get_modelmeta().custom_metadata_map)
        except Exception as exc:  # e.g. metadata that is not UTF-8
            raise BackendError(f"{self.path}: cannot read its metadata ({onnxruntime_error_line(exc)})") from None

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
