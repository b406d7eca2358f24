"""Qualcomm NPU (QNN HTP) support: check that a model offloads, precompile it for one Snapdragon, run it emulated.

::

    from fan_edge.export.qnn import check_offload, compile_context, npu_session

    report = check_offload("fan-int8.onnx", "SM8650")      # which nodes the HTP takes; full_offload
    compile_context("fan-int8.onnx", "SM8650", "fan-int8-sm8650.onnx")   # EPContext model, one file
    session = npu_session("fan-int8.onnx", "SM8650")        # onnxruntime session on the (emulated) HTP

The Hexagon tensor processor (HTP) compiles the whole graph for one chip, so
every step takes the SoC: a name from :data:`SOCS` or QNN's bare
``soc_model`` number. It needs fixed shapes (``batch=1``) and is built for an
int8 QDQ model (``fan-export --precision int8``); float ops, including those
left between the QDQ convolutions, run in fp16 on the HTP. A node QNN does
not take would run on the phone's CPU between NPU partitions, which is not
what an NPU export promises: every session here disables onnxruntime's CPU
fallback, so "works" means "runs wholly on the NPU".

Tooling: the onnxruntime-qnn 2.x wheel (Linux x86 and Windows) is an
execution-provider plugin for stock onnxruntime; on x86 its HTP backend is
an emulator of the chip (seconds per inference of the default FAN: good for
accuracy checks, useless for timing). The plugin is registered by the runtime
(:func:`fan_edge.runtime.backends.onnxruntime_backend.register_qnn`), which
is also what runs these models in an app: ``LandmarkSession(path,
device="npu")`` reads the SoC from the contract entry written here
(:func:`contract_entry`).

QNN keeps its backend per process: a session without a SoC succeeds on the
emulator once any earlier session in the process named one. Every function
here names the SoC, so none depends on that.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, write_text_atomic
from ..errors import ExportError, FanEdgeError
from ..runtime.backends.onnxruntime_backend import QNN_PROVIDER, onnxruntime_error_line, qnn_ep_devices, register_qnn
from ..runtime.contract import METADATA_KEY, ModelContract, read_sidecar, sidecar_path

# Snapdragon SoC -> QNN soc_model: the name table inside the installed onnxruntime-qnn 2.7.0
# (libonnxruntime_providers_qnn.so, qnn::soc::SocModelFromName's kSocModelNameMap, read entry by entry; the
# plugin accepts these names for its soc_model option too). Marketing names where Qualcomm's are well known.
SOCS: dict[str, int] = {
    "SM8350": 30,  # Snapdragon 888
    "SM8325": 34,
    "SM8450": 36,  # Snapdragon 8 Gen 1
    "SM8475": 42,  # Snapdragon 8+ Gen 1
    "SM8550": 43,  # Snapdragon 8 Gen 2
    "SM8650": 57,  # Snapdragon 8 Gen 3
    "SC8380XP": 60,  # Snapdragon X Elite
    "SM8635": 68,  # Snapdragon 8s Gen 3
    "SM8750": 69,  # Snapdragon 8 Elite
    "SM7675": 70,  # Snapdragon 7+ Gen 3
    "SM8850": 87,
    "SC8480XP": 88,
    "SM8975": 103,
}

_TRACE_OPTIONS = ("enable_framework_op_trace", "framework_op_trace_dir")


def resolve_soc(soc: str | int) -> tuple[str, int]:
    """(name, soc_model) for a SoC name (any case) or a bare soc_model number.

    A number outside :data:`SOCS` is accepted as QNN's own (the SDK knows more chips than it names); QNN
    refuses it if it does not know it either. Names are checked here because QNN silently ignores a name it
    does not know and compiles for its default target, which cannot hold FAN.
    """
    if isinstance(soc, bool) or not isinstance(soc, (str, int)):
        raise ExportError(f"a SoC is a name such as SM8650 or a QNN soc_model number, got {soc!r}")
    text = str(soc).strip().upper()
    if text.isdigit() and 0 < int(text) < 10_000:
        number = int(text)
        names = [name for name, n in SOCS.items() if n == number]
        return (names[0] if names else f"soc_model {number}"), number
    if text in SOCS:
        return text, SOCS[text]
    raise ExportError(f"unknown Snapdragon SoC {str(soc)[:40]!r}; known: {', '.join(SOCS)}, or a QNN soc_model number")


def qnn_available() -> bool:
    """Whether the QNN execution provider can be used here (onnxruntime-qnn installed and registered)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return register_qnn()


def qnn_version() -> str:
    """The plugin and QNN SDK (QAIRT) versions: a context binary is tied to the SDK that compiled it."""
    try:
        import onnxruntime_qnn
        from onnxruntime_qnn import build_and_package_info
    except ImportError:
        return "onnxruntime-qnn absent"
    sdk = getattr(build_and_package_info, "qnn_version", "unknown")
    return f"onnxruntime-qnn {getattr(onnxruntime_qnn, '__version__', 'unknown')} (QAIRT {sdk})"


def contract_entry(soc: str | int, context: bool = False) -> dict[str, Any]:
    """The ``qnn`` entry of a model's contract: the SoC the runtime compiles for (``LandmarkSession(device="npu")``).

    The exporter puts it in the contract as ``contract.replace(extra={**contract.extra, "qnn": entry})``;
    ``context`` marks an EPContext model, which holds a binary compiled for that chip only.
    """
    name, number = resolve_soc(soc)
    entry: dict[str, Any] = {"soc": name, "soc_model": number, "backend_type": "htp", "qnn_version": qnn_version()}
    if context:
        entry["context"] = True
    return entry


@dataclass(frozen=True)
class OffloadReport:
    """What QNN's HTP takes of a model for one SoC.

    ``nodes`` counts the graph as onnxruntime hands it to QNN, after onnxruntime's own rewrites: a few more
    nodes than the file has (its basic optimisations duplicate shared DequantizeLinear nodes; counts: docs/npu.md).
    ``npu_nodes`` counts those QNN takes; ``unsupported`` the others as "op_type name",
    with QNN's reason for each at the same index of ``reasons``. ``full_offload`` also requires that QNN
    compiled the graph (``error`` says why not).
    """

    soc: str
    soc_model: int
    nodes: int
    npu_nodes: int
    unsupported: tuple[str, ...]
    full_offload: bool
    qnn_version: str
    reasons: tuple[str, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "soc": self.soc,
            "soc_model": self.soc_model,
            "nodes": self.nodes,
            "npu_nodes": self.npu_nodes,
            "unsupported": list(self.unsupported),
            "reasons": list(self.reasons),
            "full_offload": self.full_offload,
            "qnn_version": self.qnn_version,
            "error": self.error,
        }


def _require_qnn() -> None:
    if not qnn_available():
        raise ExportError("the Qualcomm NPU needs onnxruntime-qnn 2.x (an onnxruntime plugin): pip install onnxruntime-qnn")


def _load_graph(onnx_path: str | Path, compiled_ok: bool = False):
    """The ONNX model, refused in one line if QNN's HTP cannot compile it: dynamic shapes, already compiled."""
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ExportError(f"{path}: not a readable ONNX model ({onnxruntime_error_line(exc)})") from None
    if any(node.op_type == "EPContext" for node in model.graph.node):
        if compiled_ok:
            return model
        raise ExportError(f"{path}: already compiled (an EPContext model); give the QDQ model it came from")
    initializers = {t.name for t in model.graph.initializer}
    for tensor in model.graph.input:
        if tensor.name in initializers:
            continue
        dims = tensor.type.tensor_type.shape.dim
        if not dims or any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
            raise ExportError(
                f"{path}: input {tensor.name!r} has the dynamic shape {shape}; "
                "QNN's HTP compiles fixed shapes only: export with batch=1"
            )
    return model


def _session_options(soc_model: int, threads: int | None = None, trace_dir: Path | None = None):
    """Session options with the QNN HTP for ``soc_model`` and no CPU fallback (a node QNN refuses is an error)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # QNN logs refusals as errors on stderr; they come back as one ExportError
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    provider = {"backend_type": "htp", "soc_model": str(soc_model)}
    if trace_dir is not None:
        provider.update(dict(zip(_TRACE_OPTIONS, ("1", str(trace_dir)))))
    devices = qnn_ep_devices("htp")
    if not devices:
        raise ExportError("onnxruntime lists no QNN device after registering onnxruntime-qnn")
    options.add_provider_for_devices(devices, provider)
    return options


def check_offload(onnx_path: str | Path, soc: str | int) -> OffloadReport:
    """Which nodes of ``onnx_path`` QNN's HTP takes when compiling for ``soc``, and whether that is all of them.

    Opens a session on the HTP with CPU fallback disabled and QNN's framework op trace on; the trace lists the
    nodes QNN took and those it refused with its reason. A model that fully offloads also compiles (on x86,
    the emulator finalises the graph), which takes seconds for a large FAN.
    """
    name, number = resolve_soc(soc)
    _require_qnn()
    _load_graph(onnx_path)
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="fan-edge-qnn-trace-") as folder:
        trace_dir = Path(folder)
        error = None
        try:
            session = ort.InferenceSession(str(onnx_path), _session_options(number, trace_dir=trace_dir))
            if session.get_providers()[0] != QNN_PROVIDER:
                error = "onnxruntime did not start the QNN provider"
        except FanEdgeError:
            raise
        except Exception as exc:  # onnxruntime's untyped errors
            error = onnxruntime_error_line(exc)
        traces = sorted(trace_dir.glob("*.json"))
        if not traces:  # QNN failed before partitioning: its device setup refused the SoC
            why = "does this QNN know that SoC?" if error is None or "fallback to CPU EP" in error else error
            raise ExportError(f"{onnx_path}: QNN's HTP did not start for {name} ({why})")
        try:
            trace = json.loads(traces[0].read_text())
            summary = trace["summary"]
            refused = trace.get("unsupported_nodes") or []
            nodes, npu_nodes = int(summary["total_onnx_nodes"]), int(summary["supported_nodes"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"{onnx_path}: QNN's op trace is not what this fan-edge reads ({onnxruntime_error_line(exc)})") from None
    unsupported = tuple(f"{n.get('op_type', '?')} {n.get('node_name', '?')}" for n in refused)
    reasons = tuple(str(n.get("reason", "")) for n in refused)
    if error and "fallback to CPU EP" in error:
        error = "not every node runs on the HTP and CPU fallback is off"
    return OffloadReport(
        soc=name,
        soc_model=number,
        nodes=nodes,
        npu_nodes=npu_nodes,
        unsupported=unsupported,
        full_offload=not unsupported and error is None,
        qnn_version=qnn_version(),
        reasons=reasons,
        error=error,
    )


def compile_context(onnx_path: str | Path, soc: str | int, out_path: str | Path) -> Path:
    """Write ``out_path``: the model precompiled for ``soc``'s HTP, as an EPContext model in one file.

    The phone then loads the compiled QNN context binary instead of compiling the graph at every app start
    (seconds for a large model, on the user's battery). The binary is embedded in the ONNX file (one file
    to ship; it holds the weights, so the QDQ model is not needed beside it). It is compiled for that SoC's
    HTP (architecture and on-chip memory) with this QNN SDK: expect it to load only on that chip, with a QNN
    runtime at least as new; onnxruntime records both in the model's ``ep_compatibility_info`` metadata. The
    x86 emulator does not enforce the chip (it loads a context compiled for another one). The contract
    (metadata and, when the source has one, the sidecar) gains ``qnn`` with the SoC and ``context: true``,
    from which ``LandmarkSession(out_path, device="npu")`` takes the SoC. Refused in one line unless the
    whole graph offloads; compiled output is not byte-for-byte reproducible (the binary carries a build stamp).
    """
    name, number = resolve_soc(soc)
    _require_qnn()
    source = Path(onnx_path)
    model = _load_graph(source)
    out = Path(out_path)
    if out.resolve() == source.resolve():
        raise ExportError(f"{out}: the output would replace its own source; give another path")
    import onnxruntime as ort

    contract = _tagged_contract(source, model, name)
    if contract is not None:
        kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, contract.to_json()
    with atomic_path(out) as tmp:
        try:
            compiler = ort.ModelCompiler(
                _session_options(number),
                model.SerializeToString(),
                embed_compiled_data_into_model=True,
                flags=ort.OrtCompileApiFlags.ERROR_IF_NO_NODES_COMPILED,
            )
            compiler.compile_to_file(str(tmp))
        except FanEdgeError:
            raise
        except Exception as exc:  # onnxruntime's untyped errors
            why = onnxruntime_error_line(exc)
            if "fallback to CPU EP" in why:
                why = "not every node runs on the HTP (check_offload lists them)"
            raise ExportError(f"{source}: QNN could not compile it for {name} ({why})") from None
        try:  # loadable, or it does not replace anything
            ort.InferenceSession(str(tmp), _session_options(number))
        except Exception as exc:
            raise ExportError(f"{out}: the compiled model does not load on the HTP ({onnxruntime_error_line(exc)})") from None
    side = sidecar_path(out)
    if contract is not None and read_sidecar(source) is not None:
        write_text_atomic(side, contract.to_json(indent=2))
    elif side.is_file():
        side.unlink()  # it described the file just replaced, and a session would read it before the metadata
    return out


def _tagged_contract(source: Path, model, soc: str) -> ModelContract | None:
    """The model's fan-edge contract with the ``qnn`` entry of a context compiled for ``soc`` (None if it has none)."""
    try:
        contract = read_sidecar(source)
        if contract is None:
            text = {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)
            contract = ModelContract.from_json(text) if text is not None else None
    except FanEdgeError as exc:
        raise ExportError(f"{source}: its contract is unreadable ({exc})") from None
    if contract is None:
        return None
    return contract.replace(extra={**contract.extra, "qnn": contract_entry(soc, context=True)})


def npu_session(onnx_path: str | Path, soc: str | int, threads: int | None = None):
    """An onnxruntime session on QNN's HTP for ``soc`` with no CPU fallback (emulated on x86): for accuracy checks.

    Takes a QDQ model or a context from :func:`compile_context`. Its outputs are what the chip computes (the
    emulator runs the HTP's own int8 kernels), so comparing them with onnxruntime on the CPU with
    ``session.disable_quant_qdq=1`` (the QDQ graph evaluated in float) measures what the NPU changes. Apps use
    ``LandmarkSession(path, device="npu")`` instead.
    """
    name, number = resolve_soc(soc)
    _require_qnn()
    _load_graph(onnx_path, compiled_ok=True)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ExportError(f"threads must be a positive integer, got {threads!r}")
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(onnx_path), _session_options(number, threads))
    except FanEdgeError:
        raise
    except Exception as exc:
        why = onnxruntime_error_line(exc)
        if "fallback to CPU EP" in why:
            why = "not every node runs on the HTP (check_offload lists them)"
        raise ExportError(f"{onnx_path}: no session on QNN's HTP for {name} ({why})") from None


__all__ = [
    "SOCS",
    "OffloadReport",
    "check_offload",
    "compile_context",
    "contract_entry",
    "npu_session",
    "qnn_available",
    "qnn_version",
    "resolve_soc",
]
