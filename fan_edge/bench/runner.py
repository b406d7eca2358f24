"""fan-bench's engine: models x targets (or existing artifacts) -> one measured row each.

For every model, the artifacts its targets need are exported with
:func:`fan_edge.export.export_model` into the output folder, or reused from
it when a previous run exported the same weights the same way (a small
manifest, ``fan-bench-cache.json``, records the weights' hash and the export
options of each artifact). Then each row is measured:

- accuracy, in this process, on the same faces for every row: the artifact
  through :class:`~fan_edge.runtime.LandmarkSession` (the code an app runs),
  PyTorch eager through :func:`fan_edge.evaluation.predict_dataset`;
  scored by :func:`fan_edge.data.metrics.score`;
- latency and peak memory, in fresh subprocesses
  (``python -m fan_edge.ondevice.bench`` for artifacts,
  ``python -m fan_edge.bench.torch_bench`` for PyTorch), so that no row's
  imports, buffers or threads weigh on another's figures. Once every row is
  exported and scored, the runs are spread over interleaved rounds
  (:func:`time_rows`): each round times every row in turn, one process per
  row, and a row's percentiles pool all of its rounds' runs. A machine whose
  speed drifts during the benchmark then slows every row alike, instead of
  whichever rows were timed during the slow minutes, so rows of one run can
  be compared with each other.

Each row is a :class:`~fan_edge.rows.BenchRow` and stands alone: an export,
a load, a run or a timing that fails makes that row :attr:`~fan_edge.rows.Status.FAILED`
("failed") with a one-line reason, and the others go on. A target on a device
that is not here is "device absent". An artifact whose NME (inter-ocular) is
worse than its model's PyTorch row by more than the export's tolerance for its
precision (:data:`fan_edge.export.parity.TOLERANCES`) is "failed accuracy", the
exporter's own word for it; without data, the exporter's parity verdict (in
the sidecar) decides.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import write_text_atomic
from ..errors import BenchError, FanEdgeError, first_line
from ..limits import MAX_THREADS, check_int
from ..rows import BenchRow, Status
from ..ondevice.bench import artifact_size_mb
from .targets import TORCH, BenchTarget

CACHE_MANIFEST = "fan-bench-cache.json"
# The exporter's parity check draws its faces with this seed; the benchmark scores the very same faces.
FACES_SEED = 1

Log = Callable[[str], None]


@dataclass
class BenchOptions:
    models: list[str] = field(default_factory=lambda: ["default"])
    targets: list[BenchTarget] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    data: Path | None = None
    calib: Path | None = None
    verify: Path | None = None  # faces each export's parity check is scored on (None: data, else calib)
    calib_faces: int | None = None  # None: each model card's measured count, else 128 (Int8Recipe.with_card)
    faces: int | None = None  # None: every face of --data
    threads: int = 2
    runs: int = 100  # timed runs per row, over all rounds
    warmup: int = 10  # untimed runs at the start of each round's process
    rounds: int = 10  # interleaved timing rounds (at most ``runs``): see time_rows
    out: Path = Path("fan-bench-artifacts")
    verify_export: bool = True
    fresh: bool = False  # re-export even when the cache holds a matching artifact
    trust: bool = False
    timeout_s: float = 1800.0  # per timing subprocess
    soc: str | None = None  # Snapdragon of the @npu rows of onnxruntime (fan-export --soc; default SM8650)
    npu_faces: int = 64  # faces scored on the QNN emulator (seconds each), with PyTorch on the same faces
    baseline: bool = True  # add a PyTorch row for artifacts whose model is a registry name


# ---- rows ----------------------------------------------------------------------------------------


def new_row(model: str, target: BenchTarget, path: str | None = None) -> BenchRow:
    return BenchRow(model=model, target=target.runtime, precision=target.precision, device=target.device, path=path)


def _reason(exc: BaseException) -> str:
    return first_line(exc, with_type=not isinstance(exc, FanEdgeError))


# ---- faces ---------------------------------------------------------------------------------------


class _Subset:
    """Some items of a FaceFolder, for :func:`~fan_edge.evaluation.predict_dataset` (which needs ``input_size``)."""

    def __init__(self, dataset: Any, indices: np.ndarray) -> None:
        self.dataset, self.indices, self.input_size = dataset, indices, dataset.input_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.dataset[int(self.indices[i])]


class Faces:
    """The evaluation faces, cropped once per (input size, crop) and shared by every row."""

    def __init__(self, folder: Path, count: int | None) -> None:
        self.folder, self.count = folder, count
        self._crops: dict[str, Any] = {}

    def crops(self, input_size: int, crop: Any):
        from ..calibration import FaceCrops

        key = json.dumps([input_size, crop.to_dict()], sort_keys=True)
        if key not in self._crops:
            self._crops[key] = FaceCrops(self.folder, input_size, crop, count=self.count, seed=FACES_SEED)
        return self._crops[key]


@dataclass(frozen=True)
class Accuracy:
    """A row's accuracy columns (percent), on the shared faces."""

    nme_io: float
    nme_box: float
    auc7: float
    fr7: float
    faces: int

    def apply(self, row: BenchRow) -> BenchRow:
        """Fill ``row``'s accuracy columns; returns the row."""
        row.nme_io, row.nme_box, row.auc7, row.fr7, row.faces = self.nme_io, self.nme_box, self.auc7, self.fr7, self.faces
        return row


def _figures(pred: np.ndarray, gt: np.ndarray) -> Accuracy:
    from ..data.metrics import score

    scores = score(pred, gt).as_percent()
    return Accuracy(*(round(float(scores[k]), 4) for k in ("nme_io", "nme_box", "auc7", "fr7")), faces=int(scores["faces"]))


def artifact_accuracy(path: Path, backend: str, device: str, threads: int | None, faces: Faces) -> Accuracy:
    """NME, AUC@7, FR@7 of an artifact through the runtime session, on the shared faces."""
    from ..runtime.decode import crop_points_to_image
    from ..runtime.session import LandmarkSession

    with LandmarkSession(path, backend=backend, device=device, threads=threads) as session:
        c = session.contract
        data = faces.crops(c.input_size, c.crop).load()
        images = data["images"]
        points = [session.run_crops(images[s : s + 16]).points for s in range(0, len(images), 16)]
    pred = crop_points_to_image(np.concatenate(points), data["matrices"])
    return _figures(pred, data["points"])


def torch_accuracy(net: Any, faces: Faces) -> Accuracy:
    """The same figures for PyTorch eager, through the project's evaluation, on the same faces."""
    from ..evaluation import predict_dataset

    crops = faces.crops(net.config.input_size, net.weights.crop)
    pred, gt = predict_dataset(net, _Subset(crops.dataset, crops.indices))
    return _figures(pred, gt)


# ---- timing in a fresh process -------------------------------------------------------------------


def timing_command(path_or_model: str, target: BenchTarget, options: BenchOptions, runs: int | None = None) -> list[str]:
    """The timing process's command line: ``runs`` timed runs (default ``options.runs``) after ``options.warmup``."""
    runs = options.runs if runs is None else runs
    common = ["--threads", str(options.threads), "--runs", str(runs), "--warmup", str(options.warmup), "--json"]
    if target.is_torch:
        cmd = [sys.executable, "-m", "fan_edge.bench.torch_bench", path_or_model, "--device", target.device] + common
        return cmd + (["--trust"] if options.trust else [])
    return [
        sys.executable,
        "-m",
        "fan_edge.ondevice.bench",
        path_or_model,
        "--backend",
        target.runtime,
        "--device",
        target.device,
    ] + common


def timed_row(path_or_model: str, target: BenchTarget, options: BenchOptions, runs: int | None = None) -> BenchRow:
    """The row printed (as JSON) by the timing subprocess, its status and error included."""
    cmd = timing_command(path_or_model, target, options, runs)
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=options.timeout_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timing did not finish within {options.timeout_s:.0f} s") from None
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return BenchRow.from_dict(json.loads(line))
            except (ValueError, TypeError):  # not JSON, or not a row (an unknown status)
                break
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
    raise BenchError(f"timing process exited {proc.returncode}: {tail}")


# Rounds below this give no spread: a quartile of two or three medians says nothing.
SPREAD_MIN_ROUNDS = 4


@dataclass
class Timing:
    """A row waiting for its latency: what its timing process runs (an artifact's path, or the model for PyTorch)
    and the runs gathered so far, round by round."""

    row: BenchRow
    subject: str
    target: BenchTarget
    samples: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    base_rss_mb: float | None = None
    size_mb: float | None = None

    @property
    def pending(self) -> bool:
        """Whether the row still wants timing (a row that failed, or whose device is absent, does not)."""
        return self.row.status not in (Status.FAILED, Status.DEVICE_ABSENT)

    def add(self, timing: BenchRow) -> None:
        """Pool one round's process: its runs, and the highest peak memory of any round."""
        if timing.status is not Status.PASSED:
            self.row.fail(timing.error or "timing failed", timing.status)
            return
        samples = timing.more.get("latency_ms_samples")
        if not isinstance(samples, list) or not samples:
            self.row.fail("the timing process reported no latency samples")
            return
        self.samples += [float(v) for v in samples]
        self.round_medians.append(float(np.median(samples)))
        if timing.peak_rss_mb is not None:
            self.peak_rss_mb = max(self.peak_rss_mb or 0.0, timing.peak_rss_mb)
        if timing.base_rss_mb is not None:
            self.base_rss_mb = min(self.base_rss_mb or timing.base_rss_mb, timing.base_rss_mb)
        self.size_mb = timing.size_mb

    def finish(self, options: BenchOptions) -> None:
        """Write the pooled figures into the row."""
        if not self.pending or not self.samples:
            return
        row, times = self.row, np.asarray(self.samples)
        p50 = float(np.percentile(times, 50))
        row.latency_ms_p50, row.latency_ms_p90 = round(p50, 3), round(float(np.percentile(times, 90)), 3)
        row.fps = round(1000.0 / p50, 2) if p50 > 0 else None
        row.peak_rss_mb, row.base_rss_mb = self.peak_rss_mb, self.base_rss_mb
        if row.size_mb is None:
            row.size_mb = self.size_mb
        row.threads, row.runs, row.warmup, row.rounds = options.threads, len(times), options.warmup, len(self.round_medians)
        if row.rounds >= SPREAD_MIN_ROUNDS and p50 > 0:
            q1, q3 = np.percentile(self.round_medians, [25, 75])
            row.latency_spread_pct = round(100.0 * float(q3 - q1) / p50, 1)
        row.latency_source = "timed here"


def round_runs(runs: int, rounds: int) -> list[int]:
    """``runs`` split over ``rounds`` (at most one round per run), the first rounds taking the remainder."""
    rounds = max(1, min(rounds, runs))
    return [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]


def time_rows(timings: Sequence[Timing], options: BenchOptions, log: Log) -> None:
    """Time every pending row in interleaved rounds: round 1 times each row in turn, then round 2, and so on.

    Each round of each row is a fresh timing process (``options.warmup``
    untimed runs, then its share of ``options.runs``); a row's latency is the
    percentiles of all its runs together. Interleaving is what makes the rows
    of one benchmark comparable on a machine whose speed drifts: sequential
    rows put a slow minute on one row only. A round that fails fails its row,
    whose other rounds are then skipped.
    """
    shares = round_runs(options.runs, options.rounds)
    for r, runs in enumerate(shares, start=1):
        for t in timings:
            if not t.pending:
                continue
            log(f"timing round {r}/{len(shares)}: {t.target.label} {t.row.model} ({runs} runs after {options.warmup}, "
                f"{options.threads} threads)")
            try:
                t.add(timed_row(t.subject, t.target, options, runs))
            except Exception as exc:  # noqa: BLE001 - one row's failure never stops the others
                t.row.fail(_reason(exc))
    for t in timings:
        t.finish(options)


# ---- export with a cache -------------------------------------------------------------------------


def weights_digest(net: Any) -> str:
    """sha256 of the config and every tensor of the state dict: what an artifact was exported from."""
    h = hashlib.sha256(json.dumps(net.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ArtifactCache:
    """Which artifacts of the output folder were exported from which weights, with which options."""

    def __init__(self, folder: Path) -> None:
        from ..export.staging import recover_exports

        self.folder = folder
        self.path = folder / CACHE_MANIFEST
        recover_exports(folder)  # an export killed mid-commit here is finished before anything is judged reusable
        try:
            self.entries: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, ValueError):
            self.entries = {}

    def hit(self, artifact: Path, key: dict[str, Any]) -> bool:
        from ..runtime.contract import sidecar_path

        return artifact.exists() and sidecar_path(artifact).is_file() and self.entries.get(artifact.name) == key

    def forget(self, artifacts: Sequence[Path]) -> None:
        """Drop the entries of artifacts about to be re-exported: a kill mid-export must not leave them vouched for."""
        dropped = [self.entries.pop(a.name) for a in artifacts if a.name in self.entries]
        if dropped:
            write_text_atomic(self.path, json.dumps(self.entries, indent=2, sort_keys=True) + "\n")

    def store(self, artifact: Path, key: dict[str, Any]) -> None:
        self.entries[artifact.name] = key
        write_text_atomic(self.path, json.dumps(self.entries, indent=2, sort_keys=True) + "\n")


def parity_faces(options: BenchOptions) -> Path | bool:
    """The folder each export's parity check is scored on: the one named for it, else the faces the benchmark
    scores, else the calibration faces (the CLI fills in its documented default, the checkout's AFW faces);
    False without the check."""
    if not options.verify_export:
        return False
    return options.verify or options.data or options.calib or False


def _export_key(digest: str, target: BenchTarget, options: BenchOptions, int8: Any) -> dict[str, Any]:
    key: dict[str, Any] = {
        "weights": digest,
        "target": target.export_target,
        "precision": target.precision,
        "fan_edge": __version__,
    }
    if target.precision == "int8":  # the recipe's calibration (its other choices are the defaults of this version)
        key.update(calib=int8.calib, calib_faces=int8.calib_faces)
    if target.npu_export is not None:
        key.update(device=target.npu_export, soc=options.soc)
    verify = parity_faces(options)
    if verify:  # a cached artifact's verdict is its sidecar's, scored on these faces
        key.update(verify=str(verify))
    return key


def export_artifacts(
    model: str, name: str, digest: str, targets: Sequence[BenchTarget], options: BenchOptions, log: Log,
    card: dict[str, Any] | None = None,
) -> dict[BenchTarget, Path | BaseException]:
    """Each target's artifact path, or the exception that stopped its export.

    Targets that share a precision set are exported in one call (the fp32
    ONNX graph is then built once for ONNX and OpenVINO); if such a call
    fails, its artifacts are retried one by one so that only the failing one
    is lost.
    """
    from ..export.exporter import TARGETS, default_output, export_model
    from ..export.int8 import Int8Recipe

    out = options.out.resolve()
    cache = ArtifactCache(out)
    # One int8 recipe for every row, its calibration count decided (the option's, else the model card's) before it
    # keys the cache: a card whose count changed must not reuse an artifact calibrated on the old one.
    int8 = Int8Recipe(calib=options.calib, calib_faces=options.calib_faces).with_card(card)
    verify = parity_faces(options)
    from ..export.devices import resolve_device

    def artifact_path(t: BenchTarget) -> Path:
        device = resolve_device(t.npu_export, options.soc if t.npu_export == "npu" else None)
        stem = name + (device.file_tag if device is not None else "")
        return default_output(stem, TARGETS[t.export_target], t.precision, "heatmaps", out)  # type: ignore[index]

    paths = {t: artifact_path(t) for t in targets}
    keys = {t: _export_key(digest, t, options, int8) for t in targets}
    result: dict[BenchTarget, Path | BaseException] = {}
    todo = []
    for t in targets:
        if not options.fresh and cache.hit(paths[t], keys[t]):
            log(f"{name} {t.export_target} {t.precision}: reusing {paths[t]}")
            result[t] = paths[t]
        else:
            todo.append(t)

    def run(group: list[BenchTarget]) -> None:
        exports = list(dict.fromkeys(t.export_target for t in group))
        precisions = list(dict.fromkeys(t.precision for t in group))
        cache.forget([paths[t] for t in group])
        npu = group[0].npu_export  # NPU rows are exported one by one
        export_model(
            model,
            ",".join(exports),  # type: ignore[arg-type]
            ",".join(precisions),
            output=str(out) + os.sep,
            int8=int8,
            verify=verify,
            verify_faces=options.npu_faces if npu == "npu" else (options.faces or 64),
            trust=options.trust,
            log=log,
            device=npu,
            soc=options.soc if npu == "npu" else None,
        )

    # Group export targets by the set of precisions asked of them (export_model exports a full product).
    by_target: dict[str, set[str]] = {}
    for t in todo:
        if t.npu_export is None:
            by_target.setdefault(t.export_target, set()).add(t.precision)  # type: ignore[arg-type]
    groups: dict[frozenset[str], list[BenchTarget]] = {}
    for t in todo:
        if t.npu_export is not None:
            groups[frozenset({t.label})] = [t]
            continue
        groups.setdefault(frozenset(by_target[t.export_target]), []).append(t)  # type: ignore[index]
    for group in groups.values():
        started = time.time()
        try:
            run(group)
            done = group
        except Exception as exc:  # noqa: BLE001 - retried one by one below, so that one bad artifact costs only its row
            if len(group) == 1:
                result[group[0]] = exc
                continue
            log(f"{name}: export of {', '.join(map(str, group))} failed ({_reason(exc)}); retrying one by one")
            done = []
            for t in group:
                if _written_since(paths[t], started):
                    done.append(t)
                    continue
                try:
                    run([t])
                    done.append(t)
                except Exception as one:  # noqa: BLE001 - this row's failure
                    result[t] = one
        for t in done:
            result[t] = paths[t]
            cache.store(paths[t], keys[t])
    return result


def _written_since(artifact: Path, started: float) -> bool:
    from ..runtime.contract import sidecar_path

    sidecar = sidecar_path(artifact)
    return artifact.exists() and sidecar.is_file() and sidecar.stat().st_mtime >= started


def _sidecar_verdict(path: Path) -> str | None:
    """The exporter's parity failure recorded in the sidecar ("" when it passed, None when never verified)."""
    from ..runtime.contract import read_sidecar

    try:
        contract = read_sidecar(path)
    except FanEdgeError:
        return None
    v = (contract.verification or {}) if contract else {}
    try:
        status = Status(v.get("status"))  # sidecars written before one vocabulary say "ok" for passed
    except ValueError:
        return None
    if status is Status.FAILED_ACCURACY:
        delta, tol = v.get("delta_nme"), v.get("tolerance")
        if isinstance(delta, (int, float)) and isinstance(tol, (int, float)):
            return f"export parity: ΔNME io {delta:+.3f} pp > {tol} pp on {v.get('faces', '?')} faces"
        return "export parity check failed"
    return "" if status is Status.PASSED else None


def _apply_sidecar_verdict(row: BenchRow, path: Path) -> None:
    """Without faces to score, the exporter's parity verdict (in the sidecar) decides the row's accuracy status."""
    verdict = _sidecar_verdict(path)
    if verdict:
        row.fail(verdict, Status.FAILED_ACCURACY)


# ---- the benchmark -------------------------------------------------------------------------------


def _artifact_row(
    path: Path, model: str, target: BenchTarget, options: BenchOptions, faces: Faces | None, log: Log,
    timings: list[Timing],
) -> BenchRow:
    """An artifact's row, scored; it joins ``timings`` (its latency comes from :func:`time_rows`)."""
    row = new_row(model, target, path=str(path))
    try:
        row.size_mb = round(artifact_size_mb(path), 3)
        if faces is not None:
            log(f"{target.label} {path.name}: accuracy on {faces.folder.name}")
            artifact_accuracy(path, target.runtime, target.device, options.threads, faces).apply(row)
        else:
            _apply_sidecar_verdict(row, path)
        timings.append(Timing(row, str(path), target))
    except Exception as exc:  # noqa: BLE001 - one row's failure never stops the others
        row.fail(_reason(exc))
    return row


def _npu_row(
    path: Path, model: str, net: Any, target: BenchTarget, options: BenchOptions, faces: Faces | None, log: Log
) -> BenchRow:
    """A row of an NPU artifact: accuracy from the chip's emulator (QNN) or its int8 graph on this CPU (Ethos-U,
    whose compiled graph computes the same int8 ops), latency from the compiler's estimate or none; each figure
    says where it came from (``accuracy_source``, ``latency_source``)."""
    from ..runtime.contract import read_sidecar

    row = new_row(model, target, path=str(path))
    try:
        row.size_mb = round(artifact_size_mb(path), 3)
        contract = read_sidecar(path)
        report = ((contract.verification or {}) if contract else {}).get("npu") or {}
        if target.npu_export == "npu":
            soc = report.get("soc") or (contract.extra.get("qnn", {}).get("soc") if contract else None)
            row.latency_source = report.get("latency_source") or "not measurable offline"
            if faces is not None:
                subset = Faces(faces.folder, options.npu_faces)
                log(f"{target.label} {path.name}: accuracy on {options.npu_faces} faces of {faces.folder.name}, on the {soc} emulator")
                artifact_accuracy(path, target.runtime, "npu", options.threads, subset).apply(row)
                reference = torch_accuracy(net, subset)
                row.delta_nme_io = round(row.nme_io - reference.nme_io, 4)  # type: ignore[operator]
                row.accuracy_source = f"QNN HTP emulator on x86 ({soc}), {row.faces} faces; PyTorch on the same faces {reference.nme_io:.3f}%"
            row.npu_offload = f"{report.get('npu_nodes')}/{report.get('nodes')} nodes" if report else None
        else:
            if faces is not None:
                log(f"{target.label} {path.name}: accuracy of its int8 graph on {faces.folder.name} (LiteRT, this CPU)")
                artifact_accuracy(path, target.runtime, "cpu", options.threads, faces).apply(row)
                row.accuracy_source = "the same int8 graph on this CPU (LiteRT)"
            if not isinstance(report.get("estimated_ms"), (int, float)):
                raise BenchError(f"{path.name}: its sidecar has no Vela report (export it with --device {target.device})")
            row.latency_ms_p50 = round(float(report["estimated_ms"]), 3)
            row.fps = round(1000.0 / report["estimated_ms"], 1) if report["estimated_ms"] > 0 else None
            row.latency_source = f"vela estimate ({report.get('system_config')}, {report.get('clock_mhz', 0):.0f} MHz)"
            row.npu_offload = f"{report.get('npu_op_share', 0):.0%} of ops; SRAM {report.get('sram_kib', 0):.0f} KiB"
        if faces is None:  # without data, the exporter's own parity verdict decides, as for every other artifact
            _apply_sidecar_verdict(row, path)
    except Exception as exc:  # noqa: BLE001 - one row's failure never stops the others
        row.fail(_reason(exc))
    return row


def _torch_row(
    model: str, name: str, net: Any, target: BenchTarget, options: BenchOptions, faces: Faces | None, log: Log,
    timings: list[Timing],
) -> BenchRow:
    """PyTorch eager's row, scored; it joins ``timings`` (its latency comes from :func:`time_rows`)."""
    row = new_row(name, target, path=model)
    try:
        if target.device != "cpu":
            import torch

            if target.device != "gpu" or not torch.cuda.is_available():
                return row.fail(f"no {target.device} device for PyTorch here", Status.DEVICE_ABSENT)
        if faces is not None:
            log(f"{target.label} {name}: accuracy on {faces.folder.name}")
            torch_accuracy(net, faces).apply(row)
        timings.append(Timing(row, model, target))
    except Exception as exc:  # noqa: BLE001
        row.fail(_reason(exc))
    return row


def _device_absent(target: BenchTarget) -> str | None:
    """Why ``target``'s device is not usable here, or None (raises when its backend is not installed)."""
    from ..ondevice.bench import device_present

    if target.npu_export is not None:  # compiled here, checked on an emulator or estimated: no chip needed
        from ..export.ethos_u import vela_available
        from ..export.qnn import qnn_available

        ready = qnn_available() if target.npu_export == "npu" else vela_available()
        return None if ready else f"{target.label} needs " + ("onnxruntime-qnn" if target.npu_export == "npu" else "ethos-u-vela") + \
            " (pip install 'fan-edge[npu]')"
    if target.device == "cpu" or device_present(target.runtime, target.device):
        return None
    return f"no {target.device} device for {target.runtime} here"


def bench_model(
    model: str, options: BenchOptions, faces: Faces | None, log: Log, timings: list[Timing]
) -> list[BenchRow]:
    """Every target's row for one model (export as needed), scored; the rows to time join ``timings``."""
    from ..export.exporter import resolve_model

    try:
        net, name, card = resolve_model(model, trust=options.trust)
    except Exception as exc:  # noqa: BLE001 - a model that cannot load fails its rows, not the others'
        return [new_row(model, t).fail(_reason(exc)) for t in options.targets]

    rows: dict[BenchTarget, BenchRow] = {}
    exportable = []
    for t in options.targets:
        if t.is_torch:
            continue
        try:
            absent = _device_absent(t)
        except Exception as exc:  # noqa: BLE001 - e.g. the backend is not installed
            rows[t] = new_row(name, t).fail(_reason(exc))
            continue
        if absent:
            rows[t] = new_row(name, t).fail(absent, Status.DEVICE_ABSENT)
        else:
            exportable.append(t)
    artifacts = export_artifacts(model, name, weights_digest(net), exportable, options, log, card) if exportable else {}
    for t in options.targets:
        if t in rows:
            continue
        if t.is_torch:
            rows[t] = _torch_row(model, name, net, t, options, faces, log, timings)
            continue
        got = artifacts[t]
        if isinstance(got, BaseException):
            rows[t] = new_row(name, t).fail(f"export: {_reason(got)}")
        elif t.npu_export is not None:
            rows[t] = _npu_row(got, name, net, t, options, faces, log)
        else:
            rows[t] = _artifact_row(got, name, t, options, faces, log, timings)
    for row in rows.values():
        row.source = model  # the registry name or checkpoint the row was made from, for the compression report
    return [rows[t] for t in options.targets]


def bench_artifact(path: str, options: BenchOptions, faces: Faces | None, log: Log, timings: list[Timing]) -> BenchRow:
    """The row of an existing artifact (runtime by suffix, precision and model from its contract), scored; it joins
    ``timings``."""
    from ..runtime.backends import choose_backend
    from ..runtime.session import read_contract

    p = Path(path)
    try:
        runtime = choose_backend(p) if p.is_file() else None
        if runtime is None:
            raise BenchError(f"{p}: no such file")
        contract = read_contract(p)
    except Exception as exc:  # noqa: BLE001
        return BenchRow(model=p.name, device="cpu", path=str(p)).fail(_reason(exc))  # no runtime, no precision known
    target = BenchTarget(runtime, contract.precision, "cpu")
    return _artifact_row(p, contract.model or p.stem, target, options, faces, log, timings)


def add_speedups(rows: list[BenchRow]) -> None:
    """Speed-up of each row against its model's PyTorch eager fp32 CPU row (p50 / p50)."""
    base = {
        r.model: r.latency_ms_p50
        for r in rows
        if r.target == TORCH and r.device == "cpu" and r.status is Status.PASSED and r.latency_ms_p50
    }
    for r in rows:
        b = base.get(r.model)
        timed = r.latency_source in (None, "timed here")  # an NPU compiler's estimate is not comparable
        r.speedup = round(b / r.latency_ms_p50, 3) if b and r.latency_ms_p50 and timed else None


def check_accuracy(rows: list[BenchRow]) -> None:
    """Mark artifacts whose NME io is worse than their model's PyTorch row by more than the export tolerance."""
    from ..export.parity import TOLERANCES

    base = {r.model: r for r in rows if r.target == TORCH and r.status is Status.PASSED and r.nme_io is not None}
    for r in rows:
        ref = base.get(r.model)  # type: ignore[arg-type]
        if r.target == TORCH or ref is None or r.status is not Status.PASSED or r.nme_io is None:
            continue
        if r.faces != ref.faces:
            if r.delta_nme_io is None:
                continue
            delta = r.delta_nme_io  # measured against PyTorch on the row's own faces (the QNN emulator's subset)
        else:
            delta = r.nme_io - ref.nme_io  # type: ignore[operator]
        r.delta_nme_io = round(delta, 4)
        tol = TOLERANCES.get(r.precision)  # type: ignore[arg-type]
        if tol is not None and abs(delta) > tol:
            r.fail(f"ΔNME io {delta:+.3f} pp vs PyTorch > {tol} pp ({r.precision} tolerance)", Status.FAILED_ACCURACY)


def run_bench(options: BenchOptions, log: Log | None = None) -> list[BenchRow]:
    """Every row of the benchmark, in the order asked (models x targets, then artifacts)."""
    say = log or (lambda msg: None)
    if options.data is not None and not Path(options.data).is_dir():
        raise BenchError(f"--data {options.data}: not a folder")
    if options.calib is not None and not Path(options.calib).is_dir():
        raise BenchError(f"--calib {options.calib}: not a folder")
    check_int("threads", options.threads, 1, MAX_THREADS, BenchError)
    if isinstance(options.runs, bool) or not isinstance(options.runs, int) or options.runs < 1:
        raise BenchError(f"runs must be a positive integer, got {options.runs!r}")
    if isinstance(options.rounds, bool) or not isinstance(options.rounds, int) or options.rounds < 1:
        raise BenchError(f"rounds must be a positive integer, got {options.rounds!r}")
    if options.faces is not None and options.faces < 1:
        raise BenchError(f"faces must be a positive integer, got {options.faces!r}")
    if not options.models and not options.artifacts:
        raise BenchError("nothing to benchmark: give --model or --artifact")
    if options.models and not options.targets:
        raise BenchError("no targets given")
    if options.data is not None:
        from ..files.folders import read_folder

        read_folder(options.data)  # a one-line DataError now (a bad image or .pts included) rather than one per row later
    faces = Faces(Path(options.data), options.faces) if options.data is not None else None

    rows: list[BenchRow] = []
    timings: list[Timing] = []
    for model in options.models:
        rows += bench_model(model, options, faces, say, timings)
    artifact_rows = [bench_artifact(a, options, faces, say, timings) for a in options.artifacts]
    if options.baseline:
        have = {r.model for r in rows if r.target == TORCH}
        for name in dict.fromkeys(r.model for r in artifact_rows if r.target and r.status is not Status.FAILED):
            if name not in have and _registry_name(name):
                rows += bench_model_torch_only(name, options, faces, say, timings)
    rows += artifact_rows
    time_rows(timings, options, say)
    check_accuracy(rows)
    add_speedups(rows)
    return rows


def _registry_name(name: str) -> bool:
    from ..models import get_entry

    try:
        get_entry(name)
        return True
    except FanEdgeError:
        return False


def bench_model_torch_only(
    model: str, options: BenchOptions, faces: Faces | None, log: Log, timings: list[Timing]
) -> list[BenchRow]:
    """The PyTorch baseline row of an artifact's model, when that model is in the registry."""
    from dataclasses import replace

    return bench_model(model, replace(options, targets=[BenchTarget(TORCH)]), faces, log, timings)
