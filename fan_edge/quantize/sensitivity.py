"""Per-layer int8 sensitivity of a FAN, measured in landmarks (``fan-quantize --sensitivity``).

Which layers stay in higher precision is measured, not guessed. On a
fake-quant simulation of the artifacts' arithmetic
(:class:`fan_edge.quantize.fakequant.FakeQuantFAN`, ranges calibrated on the
calibration faces exactly as :mod:`fan_edge.export.int8` calibrates them),
each layer is quantized **alone** and the landmarks are scored on real faces:

- ΔNME (percentage points of NME inter-ocular against the ground truth,
  int8-alone minus float) and the mean landmark shift from the float model
  (crop pixels, a steadier signal on few faces);
- its share of the convolution MACs (what keeping it float costs);
- the whole scheme quantized, then the curve of ΔNME with the k most
  sensitive layers kept float, and the smallest such set that brings |ΔNME|
  within ``budget``: the recommendation, to pass to ``fan-export --int8-float``.

Schemes: ``conv`` quantizes convolutions (weights, input, output), what ONNX
Runtime's QDQ export does; ``full`` adds the residual stream where each
block reads it, as TFLite's full-integer graphs do (OpenVINO lies between).
The simulation is validated against the artifacts in docs/quantization.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..calibration import FaceCrops
from ..data.metrics import per_face_nme
from ..runtime.decode import crop_points_to_image, decode_heatmaps
from .fakequant import FakeQuantFAN

SCHEMES = {"conv": ("conv",), "full": ("conv", "stream")}


@dataclass
class LayerSensitivity:
    name: str
    kind: str
    macs: int
    macs_share: float  # of all convolution MACs
    delta_nme: float  # pp, this layer alone in int8
    shift_px: float  # mean landmark shift from the float model, crop pixels
    worst_face: float  # pp, the largest per-face NME increase (a landmark jumping to another place shows here)
    range: float  # width of its calibrated activation range (input for a conv: where its 8 bits go)


@dataclass
class CurvePoint:
    kept_float: int  # the k most sensitive layers kept float
    float_macs_share: float
    delta_nme: float
    shift_px: float
    stderr: float  # standard error of delta_nme over the faces (its noise: faces differ)


@dataclass
class SensitivityReport:
    model: str
    data: str
    faces: int
    calibration: str
    calibration_faces: int
    scheme: str
    estimator: str
    nme_float: float  # percent
    delta_full: float  # pp, every layer of the scheme in int8
    shift_full: float
    stderr_full: float  # standard error of delta_full over the faces
    budget: float
    recommended: list[str]
    layers: list[LayerSensitivity] = field(default_factory=list)  # ranked, most sensitive first
    curve: list[CurvePoint] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("nme_float", "delta_full", "shift_full", "stderr_full", "seconds"):
            out[key] = round(out[key], 4)
        for row in out["layers"] + out["curve"]:
            for k, v in row.items():
                if isinstance(v, float):
                    row[k] = round(v, 5)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_markdown(self, top: int = 25) -> str:
        lines = [
            f"# int8 sensitivity of {self.model}",
            "",
            f"{self.faces} faces of `{self.data}` (NME io float {self.nme_float:.3f}%); ranges from {self.calibration_faces} "
            f"faces of `{self.calibration}` ({self.estimator} of per-face extremes); scheme `{self.scheme}`.",
            "",
            f"Whole scheme in int8 (simulated): ΔNME {self.delta_full:+.3f} ± {self.stderr_full:.3f} pp (standard error over the "
            f"faces), landmark shift {self.shift_full:.3f} px. "
            f"Recommended float layers (|ΔNME| within {self.budget} pp): "
            + (", ".join(f"`{n}`" for n in self.recommended) if self.recommended else "none") + ".",
            "",
            "| rank | layer | kind | ΔNME alone (pp) | shift (px) | worst face (pp) | MACs share % | act. range |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(self.layers[:top], 1):
            lines.append(f"| {i} | `{r.name}` | {r.kind} | {r.delta_nme:+.4f} | {r.shift_px:.4f} | {r.worst_face:+.2f} | "
                         f"{100 * r.macs_share:.2f} | {r.range:.1f} |")
        lines += ["", "Kept float: the k most sensitive layers, the rest of the scheme in int8:", "",
                  "| k | float MACs % | ΔNME (pp) | ± | shift (px) |", "|---|---|---|---|---|"]
        for c in self.curve:
            lines.append(f"| {c.kept_float} | {100 * c.float_macs_share:.2f} | {c.delta_nme:+.4f} | {c.stderr:.4f} | {c.shift_px:.4f} |")
        return "\n".join(lines) + "\n"


def _heatmaps(model: torch.nn.Module, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(images[i : i + batch_size])).numpy() for i in range(0, len(images), batch_size)])


def measure_sensitivity(
    model: Any,
    calibration: FaceCrops,
    faces: FaceCrops,
    *,
    name: str = "model",
    scheme: str = "full",
    estimator: str = "mean",
    budget: float = 0.05,
    curve: int = 8,
    layers: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> SensitivityReport:
    """Rank ``model``'s layers by the ΔNME their int8 alone causes on ``faces``; see the module docstring.

    ``layers`` restricts the per-layer sweep (the whole-scheme figures still
    cover every layer of the scheme).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    say = log or (lambda msg: None)
    started = time.perf_counter()
    cfg = model.config
    sim = FakeQuantFAN(model, estimator)
    sim.calibrate(calibration.tensors(batch_size=16))
    data = faces.load()
    images, matrices, gt = data["images"], data["matrices"], data["points"]

    def score(hm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pts, _ = decode_heatmaps(hm, cfg.input_size, model.weights.refine)
        return pts, per_face_nme(crop_points_to_image(pts, matrices), gt) * 100

    ref_pts, ref_nme = score(_heatmaps(model, images))

    def run(quantized: Sequence[str]) -> tuple[float, float, float, float]:
        with sim.quantized(quantized) as q:
            pts, nme = score(_heatmaps(q, images))
        delta = nme - ref_nme
        stderr = float(delta.std(ddof=1) / np.sqrt(len(delta))) if len(delta) > 1 else float("nan")
        return float(delta.mean()), float(np.linalg.norm(pts - ref_pts, axis=-1).mean()), stderr, float(delta.max())

    kinds = SCHEMES[scheme]
    in_scheme = [layer for layer in sim.layers if layer.kind in kinds]
    total_macs = max(sum(layer.macs for layer in sim.layers), 1)
    sweep = [layer for layer in in_scheme if layers is None or layer.name in set(layers)]
    rows = []
    for i, layer in enumerate(sweep, 1):
        delta, shift, _, worst = run([layer.name])
        key = f"{layer.name}:in"
        lo, hi = sim.ranges[key]
        rows.append(LayerSensitivity(layer.name, layer.kind, layer.macs, layer.macs / total_macs, delta, shift, worst, hi - lo))
        say(f"[{i}/{len(sweep)}] {layer.name:28s} ΔNME {delta:+.4f} pp  shift {shift:.4f} px")
    rows.sort(key=lambda r: (-r.delta_nme, -r.shift_px))

    all_names = [layer.name for layer in in_scheme]
    macs = {layer.name: layer.macs for layer in sim.layers}
    points = []
    for k in range(0, min(curve, len(rows)) + 1):
        kept = {r.name for r in rows[:k]}
        delta, shift, stderr, _ = run([n for n in all_names if n not in kept])
        points.append(CurvePoint(k, sum(macs[n] for n in kept) / total_macs, delta, shift, stderr))
        say(f"kept float: {k} most sensitive  ΔNME {delta:+.4f} ± {stderr:.4f} pp  shift {shift:.4f} px")
    within = [p for p in points if abs(p.delta_nme) <= budget]
    best = within[0] if within else min(points, key=lambda p: abs(p.delta_nme))
    recommended = [r.name for r in rows[: best.kept_float]]
    return SensitivityReport(
        model=name,
        data=str(faces.folder),
        faces=len(images),
        calibration=str(calibration.folder),
        calibration_faces=len(calibration),
        scheme=scheme,
        estimator=estimator,
        nme_float=float(ref_nme.mean()),
        delta_full=points[0].delta_nme,
        shift_full=points[0].shift_px,
        stderr_full=points[0].stderr,
        budget=budget,
        recommended=recommended,
        layers=rows,
        curve=points,
        seconds=time.perf_counter() - started,
    )


def sensitivity_job(
    model: str,
    data: str | Path,
    out: str | Path,
    *,
    calib: str | Path | None = None,
    calib_faces: int = 128,
    faces: int | None = 64,
    scheme: str = "full",
    estimator: str = "mean",
    budget: float = 0.05,
    log: Callable[[str], None] | None = None,
) -> tuple[SensitivityReport, list[Path]]:
    """``fan-quantize --sensitivity``: load ``model``, calibrate on ``calib`` (default: ``data``), score ``faces``
    faces spread over ``data`` (None: all), and write ``OUT/sensitivity.json`` and ``OUT/sensitivity.md`` (every
    layer); returns the report and the two paths."""
    from ..atomic import check_writable, write_text_atomic
    from ..calibration import calibration_faces
    from ..models import create_model

    folder = check_writable(out, "--out", kind="folder")  # before the long measurement
    net = create_model(model).eval()
    cfg = net.config
    calibration = calibration_faces(calib or data, cfg.input_size, net.weights.crop, calib_faces)
    scored = FaceCrops(data, cfg.input_size, net.weights.crop, count=faces or None, seed=1)
    report = measure_sensitivity(net, calibration, scored, name=str(model), scheme=scheme, estimator=estimator, budget=budget, log=log)
    paths = [folder / "sensitivity.json", folder / "sensitivity.md"]
    write_text_atomic(paths[0], report.to_json())
    write_text_atomic(paths[1], report.to_markdown(top=len(report.layers)))
    return report, paths
