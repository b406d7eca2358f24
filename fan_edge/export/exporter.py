"""``export_model``: a FAN to deployable artifacts, one method per format and a table of formats.

Adding a target is one module with ``export_X(job: ExportJob) -> list[Path]``
(see :class:`fan_edge.export.job.ExportJob` for its duties) and one row of
:data:`TARGETS`; the runtime reads it once a backend for its suffix exists in
:data:`fan_edge.runtime.backends.BACKENDS`. Everything else (model loading,
the contract, the sidecar, atomic commit, calibration, parity, the table) is
here and shared.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import check_writable, output_lock
from ..calibration import FaceCrops, calibration_faces
from ..errors import ExportError
from ..runtime.cache import cache_hint, in_cache
from ..progress import on_terminal
from ..rows import Status
from ..runtime.contract import OUTPUT_KINDS, PRECISIONS, ModelContract, sidecar_path
from .staging import Staging, check_replaceable
from .devices import check_combination, resolve_device
from .int8 import Int8Recipe
from .job import ExportJob
from .metadata import build_contract
from .parity import TOLERANCES, ParityReport, verify_artifact

DEFAULT_VERIFY_FACES = 64


@dataclass(frozen=True)
class Target:
    """A row of the formats table."""

    name: str
    title: str
    suffix: str
    exporter: str | None  # "module:function"; None while the target is not implemented
    precisions: tuple[str, ...]
    packages: tuple[str, ...]  # import names the exporter needs
    extra: str  # pip extra that installs them
    backend: str | None  # runtime backend that runs the artifact (for the parity report)
    # Why an artifact that no backend here can run (backend None) is "not verified": the check is skipped, not failed.
    unverified: str = "no backend here runs it"
    int8_needs_calibration: bool = True  # False where int8 quantizes weights only (Core ML)
    companions: tuple[str, ...] = ()  # suffixes of the files written beside the artifact (OpenVINO's weights)
    folder: bool = False  # the artifact is a folder (Core ML's .mlpackage)


TARGETS: dict[str, Target] = {
    "onnx": Target(
        "onnx", "ONNX", ".onnx", "fan_edge.export.onnx_export:export_onnx", PRECISIONS,
        ("onnx", "onnxruntime", "onnxscript", "onnxslim", "onnxconverter_common"), "onnx", "onnxruntime",
    ),
    "openvino": Target(
        "openvino", "OpenVINO", ".xml", "fan_edge.export.openvino_export:export_openvino", PRECISIONS,
        ("openvino", "nncf", "onnx", "onnxscript", "onnxslim"), "openvino-export", "openvino", companions=(".bin",),
    ),
    "tflite": Target(
        "tflite", "TFLite", ".tflite", "fan_edge.export.tflite_export:export_tflite", PRECISIONS,
        ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"), "tflite", "litert",
    ),
    # An .mlpackage is a folder; Core ML runs only on Apple platforms, so its parity check cannot run here.
    "coreml": Target(
        "coreml", "Core ML", ".mlpackage", "fan_edge.export.coreml_export:export_coreml", PRECISIONS,
        ("coremltools",), "coreml", None, unverified="prediction needs macOS", int8_needs_calibration=False,
        folder=True,
    ),
}


@dataclass
class ExportResult:
    """One exported artifact: a row of fan-export's table and of its JSON (``{"exports": [...]}``)."""

    target: str
    precision: str
    outputs: str
    path: Path
    files: list[Path]
    seconds: float
    # PASSED or FAILED_ACCURACY after the parity check, NOT_VERIFIED without one (``reason`` says why, where a
    # backend is missing rather than the check turned off: Core ML). The sidecar's ``verification.status`` says the same.
    status: Status
    parity: ParityReport | None = None
    contract: ModelContract | None = field(default=None, repr=False)
    npu: dict[str, Any] | None = None  # the device compiler's report (fan_edge.export.devices)
    reason: str | None = None

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    @property
    def size_mb(self) -> float:
        """The artifact's size (its sidecar and an NPU compiler's outputs excluded)."""
        sidecar = sidecar_path(self.path)
        return sum(_size(f) for f in self.files if f != sidecar and f not in self.compiled_files) / 1e6

    @property
    def compiled_files(self) -> list[Path]:
        """The NPU compiler's files among :attr:`files` (the precompiled model, its reports)."""
        names = set(self.npu.get("files", [])) if self.npu else set()
        return [f for f in self.files if f.name in names]

    @property
    def ok(self) -> bool:
        """Whether the artifact may be used as it is (fan-export exits 1 otherwise)."""
        return self.status.usable

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "precision": self.precision,
            "outputs": self.outputs,
            "status": self.status.value,
            "reason": self.reason,
            "path": str(self.path),
            "files": [str(f) for f in self.files],
            "size_mb": round(self.size_mb, 3),
            "seconds": round(self.seconds, 2),
            "parity": self.parity.to_dict() if self.parity else None,
            "npu": self.npu,
        }


def _size(path: Path) -> int:
    """Bytes of a file, or of every file in a folder (an .mlpackage)."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0


def _split(values: str | Sequence[str], what: str, choices: Sequence[str]) -> list[str]:
    items = [v.strip() for v in values.split(",")] if isinstance(values, str) else [str(v).strip() for v in values]
    items = [v for v in items if v]
    if not items:
        raise ExportError(f"no {what} given")
    for v in items:
        if v not in choices:
            raise ExportError(f"unknown {what} {v!r}; expected one of: {', '.join(choices)}")
    return list(dict.fromkeys(items))


def _check_target(target: Target, precision: str) -> None:
    if target.exporter is None:
        raise ExportError(f"target {target.name} is not implemented yet (available: {', '.join(n for n, t in TARGETS.items() if t.exporter)})")
    if precision not in target.precisions:
        raise ExportError(f"target {target.name} has no {precision} export (it has {', '.join(target.precisions)})")
    missing = [p for p in target.packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ExportError(f"target {target.name} needs {', '.join(missing)}: pip install 'fan-edge[{target.extra}]'")


def _exporter(target: Target):
    module, function = target.exporter.split(":")  # type: ignore[union-attr]
    return getattr(importlib.import_module(module), function)


# The file names fan-edge's own runs give their checkpoints: they say which step of a run, not which model.
RUN_FILE_STEMS = frozenset({"final", "best", "last", "pruned", "model", "checkpoint"})


def resolve_model(model: Any, trust: bool = False, input_size: int | None = None) -> tuple[Any, str, dict[str, Any]]:
    """The FAN to export, a name for files and metadata, and its model card."""
    from ..models import DEFAULT_NAME, FAN, create_model, get_entry
    from ..models.factory import is_checkpoint_path
    from ..models.registry import architecture_name

    if isinstance(model, FAN):
        if input_size is not None and input_size != model.config.input_size:
            raise ExportError("input_size cannot change an already built model; pass a name or a checkpoint path")
        cfg = model.config
        name = getattr(model, "name", None) or architecture_name(cfg)
        return model.eval(), name, dict(getattr(model, "card", {}) or {})
    text = str(model)
    net = create_model(text, trust=trust, input_size=input_size)
    if is_checkpoint_path(text):
        path = Path(text)
        name = re.sub(r"(\.pth)?\.(tar|pth|pt|safetensors|zip|bin)$", "", path.name) or "model"
        if name in RUN_FILE_STEMS and path.parent.name:
            # runs/qat/final and runs/prune/final would both be "final": their artifacts would overwrite each
            # other and fan-bench would compare one with the other's PyTorch row.
            name = f"{path.parent.name}-{name}"
        card = dict(getattr(net, "card", {}) or {})
        card.setdefault("source", path.name)
    else:
        entry = get_entry(text)
        name = DEFAULT_NAME if text == "default" else text
        card = dict(entry.card())
        card.setdefault("description", entry.description)
        card["trained"] = entry.trained
    if input_size is not None and f"-i{input_size}" not in name:
        name = f"{name}-s{input_size}"
    return net.eval(), name, card


def default_output(name: str, target: Target, precision: str, outputs: str, folder: Path | None = None) -> Path:
    stem = f"{name}-{precision}" + ("-landmarks" if outputs == "landmarks" else "")
    return (folder or Path.cwd()) / f"{stem}{target.suffix}"


def _outputs_for(output: str | Path | None, combos: list[tuple[Target, str]], name: str, outputs: str) -> list[Path]:
    if output is None:
        return [default_output(name, t, p, outputs) for t, p in combos]
    out = Path(output)
    # An existing .mlpackage is a folder too, but it is an artifact to replace, not a place to write into.
    artifact_name = out.suffix.lower() in {t.suffix for t in TARGETS.values()} and not str(output).endswith(("/", "\\"))
    as_folder = (out.is_dir() and not artifact_name) or str(output).endswith(("/", "\\")) or len(combos) > 1
    if as_folder:
        if (out.exists() and not out.is_dir()) or artifact_name:
            raise ExportError(f"{out}: several artifacts need --output to be a folder")
        return [default_output(name, t, p, outputs, out) for t, p in combos]
    (target, _), = combos
    if out.suffix.lower() != target.suffix:
        raise ExportError(f"--output for {target.name} must end in {target.suffix}, got {out.name}")
    return [out]


def check_outputs(paths: Sequence[Path], targets: Sequence[Target], what: str = "--output") -> None:
    """Refuse, in one line and before any slow step, outputs that could not be written or would destroy what
    fan-edge did not write: a folder under a file artifact's name (``X.onnx/``), a folder that is not a package
    fan-edge wrote under a package's name, a sidecar or weights path that is a folder, a parent that is a file, a
    read-only folder. An output in the cache is named as the cache, with how to move it."""
    for out, target in zip(paths, targets):
        label = f"the fan-edge cache ({cache_hint()}):" if in_cache(out) else what
        check_replaceable(out, folder=target.folder)
        check_writable(out, label, kind="entry")
        for extra in [out.with_suffix(s) for s in target.companions] + [sidecar_path(out)]:
            check_replaceable(extra, folder=False)


def _precheck_output(output: str | Path | None, combos: list[tuple[Target, str]]) -> None:
    """:func:`check_outputs` on what ``--output`` says before the model's name is known (the folder, or the artifact)."""
    if output is None:
        check_writable(Path.cwd(), "the working folder", kind="folder")
        return
    out = Path(output)
    artifact_name = out.suffix.lower() in {t.suffix for t in TARGETS.values()} and not str(output).endswith(("/", "\\"))
    if artifact_name and len(combos) == 1:
        check_outputs([out], [combos[0][0]])
    elif not artifact_name:
        check_writable(out, "--output", kind="folder")


def export_model(
    model: Any = "default",
    target: str | Sequence[str] = "onnx",
    precision: str | Sequence[str] = "fp32",
    *,
    outputs: str = "heatmaps",
    output: str | Path | None = None,
    int8: Int8Recipe | None = None,
    input_size: int | None = None,
    verify: str | Path | bool | None = None,
    verify_faces: int | None = None,
    trust: bool = False,
    tolerances: dict[str, float] | None = None,
    log=None,
    batch: int | None = None,
    device: str | None = None,
    soc: str | None = None,
) -> list[ExportResult]:
    """Export ``model`` to every ``target`` x ``precision`` and check each against PyTorch.

    ``verify_faces``: faces of the parity check (None: 64, or 8 for an NPU checked on an emulator).
    ``verify``: None picks the recipe's calibration folder (``int8.calib``; else an error asking for a
    folder or ``verify=False``; ``fan-export`` passes its own default, the
    checkout's AFW faces); a path names the folder; False skips the check. An artifact that fails the
    check is kept, its status (and its sidecar's ``verification``) says
    "failed accuracy"; callers decide the exit code (``fan-export`` exits 1).

    ``int8``: the one :class:`~fan_edge.export.int8.Int8Recipe` every target
    follows (None: its defaults, which have no calibration faces), built and
    checked by the caller, so that a bad option fails before anything loads
    and the recipe a caller logs or caches is the one applied (``fan-export``
    builds it from its flags with :meth:`Int8Recipe.from_options`). Its
    calibration folder is also the default ``verify`` folder; its activation
    bits None take what the model card measured for the device
    (``export.int8_activations``, W8A16 for a model whose 8-bit activations
    fail the tolerance, docs/npu.md), else 8. Each int8 artifact's contract
    records the recipe it followed (``extra["int8"]``). A checkpoint written
    by ``fan-quantize --qat`` is quantized like any other: every target's own
    calibrated recipe places the quantizers better than NNCF's trained ones
    (docs/quantization.md); QAT's gain is in the weights.
    ``device`` (:mod:`fan_edge.export.devices`): an NPU to compile the artifact
    for (``npu`` with ``soc`` for Qualcomm, ``ethos-u55-128`` etc. for Arm);
    it fixes the batch, and its compiled files and report join the artifact.
    """
    say = log or (lambda msg: None)
    targets = [TARGETS[t] for t in _split(target, "target", list(TARGETS))]
    precisions = _split(precision, "precision", PRECISIONS)
    if outputs not in OUTPUT_KINDS:
        raise ExportError(f"unknown outputs {outputs!r}; expected one of: {', '.join(OUTPUT_KINDS)}")
    combos = [(t, p) for t in targets for p in precisions]
    for t, p in combos:
        _check_target(t, p)
    if int8 is None:
        int8 = Int8Recipe()
    elif not isinstance(int8, Int8Recipe):
        raise ExportError(f"int8 must be an Int8Recipe, got {type(int8).__name__}")
    npu = resolve_device(device, soc)
    if npu is not None:
        for t, p in combos:
            check_combination(npu, t.name, p)
        if batch not in (None, npu.batch):
            raise ExportError(f"--device {npu.name} needs a static batch of {npu.batch}")
        batch = npu.batch
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int) or input_size <= 0):
        raise ExportError(f"input size must be a positive integer, got {input_size!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 64):
        raise ExportError(f"a static batch must be an integer from 1 to 64, got {batch!r}")

    # Fail fast on the data before any slow step.
    verify_dir: Path | None = None
    if not any(t.backend for t in targets):
        pass  # nothing here can run these artifacts (Core ML): their status says so, no faces needed
    elif verify is None or verify is True:
        verify_dir = Path(int8.calib) if int8.calib is not None else None
        if verify_dir is None:
            raise ExportError("no faces to verify the export on: pass --verify DIR (images with .pts), or --no-verify")
    elif verify is not False:
        verify_dir = Path(verify)

    for t, p in combos:
        int8.check(t.name, p, needs_calibration=t.int8_needs_calibration)
    _precheck_output(output, combos)  # before the model loads: a wrong path costs a second, not an export
    # The steps before the outputs are locked are announced where progress bars are drawn (fan_edge.progress): in a
    # pipe or a log, a refusal there (a locked output, bad calibration faces) stays the one line it is.
    early = say if on_terminal() else (lambda msg: None)
    early(f"loading {model if isinstance(model, (str, Path)) else type(model).__name__}")
    net, name, card = resolve_model(model, trust, input_size)
    paths = _outputs_for(output, combos, name + (npu.file_tag if npu is not None else ""), outputs)
    check_outputs(paths, [t for t, _ in combos])
    with contextlib.ExitStack() as locks:
        # One writer per output from here to the last commit (in the cache, where concurrent `fan-edge predict` runs
        # may export the same model, a second one waits instead).
        for out in paths:
            locks.enter_context(output_lock(out, "fan-export", wait=in_cache(out)))
        return _export_all(net, name, card, combos, paths, outputs=outputs, int8=int8, verify=verify,
                           verify_dir=verify_dir, verify_faces=verify_faces, tolerances=tolerances, say=say, batch=batch,
                           npu=npu)


def _export_all(net: Any, name: str, card: dict[str, Any], combos: list[tuple[Target, str]], paths: list[Path], *,
                outputs: str, int8: Int8Recipe, verify: Any, verify_dir: Path | None, verify_faces: int | None,
                tolerances: dict[str, float] | None, say: Any, batch: int | None, npu: Any) -> list[ExportResult]:
    """The slow part of :func:`export_model`, its outputs checked and locked: each artifact is written, its sidecar
    staged beside it, the staged pair verified, and the pair committed as one unit (never a verification of
    files that another run may have replaced since)."""
    cfg = net.config
    int8 = int8.with_card(card)
    calibration = None
    if int8.calib is not None and any(p == "int8" and t.int8_needs_calibration for t, p in combos):
        if on_terminal():  # before the first "exporting" line: see export_model
            say(f"calibrating int8 on {int8.calib_faces} faces of {int8.calib}")
        calibration = calibration_faces(int8.calib, cfg.input_size, net.weights.crop, count=int8.calib_faces, seed=0)
    if verify_faces is None:  # 64, or fewer where the check runs on an emulator (seconds per face)
        verify_faces = npu.parity_faces if npu is not None and npu.parity_faces is not None else DEFAULT_VERIFY_FACES
    faces = FaceCrops(verify_dir, cfg.input_size, net.weights.crop, count=verify_faces, seed=1) if verify_dir is not None else None

    shared: dict[str, Any] = {}
    results = []
    for (t, p), out in zip(combos, paths):
        say(f"exporting {name} -> {t.title} {p} {outputs}: {out}")
        started = time.perf_counter()
        contract = build_contract(net, model_name=name, card=card, target=t.name, precision=p, outputs=outputs).replace(batch=batch)
        if npu is not None:
            contract = contract.replace(extra={**contract.extra, **npu.contract_extra()})
        recipe = None
        if p == "int8":  # the recipe as this target follows it (the model card's activation bits for the device)
            recipe = int8.for_target(t.name, card, npu.family if npu is not None else "cpu")
            record = recipe.record(t.name, weights_only=not t.int8_needs_calibration)
            contract = contract.replace(extra={**contract.extra, "int8": record})
        sidecar = sidecar_path(out)
        compiled = None
        with Staging(out) as staging:
            job = ExportJob(net, t.name, p, outputs, out, contract, staging, calibration, shared, int8=recipe, batch=batch)
            files = list(_exporter(t)(job))
            contract = job.contract  # the target may have refined it (layout, I/O quantization)
            if npu is not None:
                say(f"compiling {out.name} for {npu.name}" + (f" ({npu.soc})" if npu.soc else ""))
                compiled = npu.compile(staging.path(out))
                files = [out.parent / n for n in compiled.names] + files
            side = contract if compiled is None else contract.replace(
                verification={"status": Status.NOT_VERIFIED.value, "npu": compiled.report})
            staged_sidecar = staging.path(sidecar)
            staged_sidecar.write_text(side.to_json(indent=2) + "\n")
            seconds = time.perf_counter() - started
            result = ExportResult(t.name, p, outputs, out, [*files, sidecar], seconds, Status.NOT_VERIFIED, contract=side)
            result.npu = compiled.report if compiled is not None else None
            npu_entry = {"npu": compiled.report} if compiled is not None else {}
            if t.backend is None and verify is not False:
                result.reason = t.unverified
                result.contract = contract.replace(
                    verification={"status": result.status.value, "reason": result.reason, **npu_entry})
            elif faces is not None:
                tol = (tolerances or TOLERANCES)[p]
                if npu is not None and npu.parity_device != "cpu":
                    say(f"verifying {out.name} on the {npu.name} ({npu.soc}) emulator: {len(faces)} faces, seconds each")
                else:
                    say(f"verifying {out.name} against PyTorch on {len(faces)} faces of {verify_dir}")
                # The staged files: what this run wrote, whatever happens to the final names meanwhile.
                report = verify_artifact(staging.path(out), net, faces, p, backend=t.backend or "auto", tolerance=tol,
                                         device=npu.parity_device if npu is not None else "auto")
                result.parity = report
                result.status = Status.PASSED if report.passed else Status.FAILED_ACCURACY
                result.contract = contract.replace(
                    verification={"status": result.status.value, **report.to_dict(), **npu_entry})
            if result.contract is not side:
                staged_sidecar.write_text(result.contract.to_json(indent=2) + "\n")
            staging.commit(files + [sidecar])
        results.append(result)
    return results


# ---- the table -------------------------------------------------------------------------------------


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


_COLUMNS = [
    ("Format", lambda r: TARGETS[r.target].title),
    ("Precision", lambda r: r.precision),
    ("Outputs", lambda r: r.outputs),
    ("Status", lambda r: f"{r.status} ({r.reason})" if r.reason else str(r.status)),
    ("Size (MB)", lambda r: f"{r.size_mb:.2f}"),
    ("NME torch %", lambda r: _num(r.parity and r.parity.nme_torch, 3)),
    ("NME export %", lambda r: _num(r.parity and r.parity.nme_export, 3)),
    ("ΔNME pp", lambda r: "-" if r.parity is None else f"{r.parity.delta_nme:+.3f}"),
    ("max|Δhm|", lambda r: _num(r.parity and r.parity.max_heatmap_diff, 4)),
    ("Δpx mean", lambda r: _num(r.parity and r.parity.mean_px, 3)),
    ("Δpx max", lambda r: _num(r.parity and r.parity.max_px, 2)),
    ("decode px", lambda r: _num(r.parity and r.parity.decode_px, 4)),
    ("Export s", lambda r: f"{r.seconds:.1f}"),
    ("Path", lambda r: str(r.path)),
]


def format_table(results: Sequence[ExportResult], markdown: bool = False) -> str:
    """Ultralytics-style summary: one row per artifact."""
    header = [c for c, _ in _COLUMNS]
    rows = [[fn(r) for _, fn in _COLUMNS] for r in results]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i in (0, 1, 2, 3, len(header) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(header), "-" * len(fmt(header))] + [fmt(r) for r in rows])


def format_npu(result: ExportResult) -> str:
    """The device compiler's report of one result, in one line."""
    n = result.npu or {}
    if n.get("compiler") == "qnn":
        return (f"{result.path.name}: {n['npu_nodes']}/{n['nodes']} nodes on the {n['soc']} NPU (full offload: "
                f"{n['full_offload']}), EPContext {n['context_model']} ({n['context_mb']} MB); latency {n['latency_source']}")
    if n.get("compiler") == "vela":
        return (f"{result.path.name}: {n['device']} {n['npu_op_share']:.0%} of ops on the NPU, SRAM {n['sram_kib']:.1f} KiB, "
                f"flash {n['flash_kib']:.1f} KiB, {n['estimated_ms']:.2f} ms ({n['latency_source']}, {n['system_config']}, "
                f"{n['clock_mhz']:.0f} MHz); {n['compiled']}")
    return f"{result.path.name}: {n}"


def results_json(results: Sequence[ExportResult]) -> str:
    return json.dumps({"exports": [r.to_dict() for r in results]}, indent=2)
