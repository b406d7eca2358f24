"""Parity of an exported artifact with its PyTorch model, on real faces.

Both see the same crops (:class:`fan_edge.calibration.FaceCrops`: boxes from
the ground-truth points, the model's crop). The artifact runs through the
runtime (:class:`fan_edge.runtime.session.LandmarkSession`, the code an app
runs); the PyTorch model's heatmaps are decoded on the host with
:func:`fan_edge.runtime.decode.decode_heatmaps`. Reported:

- ``max_heatmap_diff``: max |heatmap difference| (heatmaps artifacts);
- ``mean_px`` / ``max_px``: landmark distance between the two, crop pixels;
- ``nme_torch`` / ``nme_export`` / ``delta_nme``: NME inter-ocular (percent)
  of both against the ground truth, and their difference (percentage points);
- ``decode_px`` (landmarks artifacts): max distance between the in-graph
  decoding and the host decoding of the artifact's own heatmaps (read from
  inside the graph), which must stay within :data:`DECODE_TOLERANCE_PX`.

An export passes when |ΔNME| is within :data:`TOLERANCES` for its precision
(and the decoding check holds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import FaceCrops
from ..data.metrics import per_face_nme
from ..runtime.cpu import cpu_record, format_cpu
from ..runtime.decode import crop_points_to_image, decode_heatmaps
from ..runtime.session import LandmarkSession
from .metadata import HEATMAPS_NAME

# |ΔNME inter-ocular| allowed, in absolute percentage points, by precision.
TOLERANCES = {"fp32": 0.01, "fp16": 0.05, "int8": 0.15}
# In-graph decoding against host decoding of the same heatmaps, crop pixels.
DECODE_TOLERANCE_PX = 0.01


@dataclass
class ParityReport:
    data: str
    faces: int
    nme_torch: float  # percent
    nme_export: float  # percent
    delta_nme: float  # percentage points, export - torch
    mean_px: float  # crop pixels
    max_px: float
    max_heatmap_diff: float | None
    decode_px: float | None
    tolerance: float
    passed: bool
    # The CPU it ran on (fan_edge.runtime.cpu.cpu_record): int8 results depend on its instruction set.
    cpu: dict[str, Any] = field(default_factory=cpu_record)
    backend_device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @property
    def cpu_label(self) -> str:
        """The CPU as one line (name and int8 instruction sets)."""
        return format_cpu(self.cpu)

    @property
    def failure(self) -> str:
        """Why it failed, in one line ("" when it passed)."""
        reasons = []
        if abs(self.delta_nme) > self.tolerance:
            reasons.append(f"|ΔNME| {abs(self.delta_nme):.3f} pp > {self.tolerance} pp")
        if self.decode_px is not None and self.decode_px > DECODE_TOLERANCE_PX:
            reasons.append(f"in-graph decoding off by {self.decode_px:.4f} px > {DECODE_TOLERANCE_PX} px")
        return "; ".join(reasons)


def torch_heatmaps(model: Any, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(model(torch.from_numpy(images[start : start + batch_size])).float().numpy())
    return np.concatenate(out)


def verify_artifact(
    artifact: str | Path,
    model: Any,
    faces: FaceCrops,
    precision: str,
    backend: str = "auto",
    batch_size: int = 16,
    tolerance: float | None = None,
    device: str = "auto",
) -> ParityReport:
    """Compare ``artifact`` with ``model`` on ``faces``; see the module docstring."""
    data = faces.load()
    images, matrices, gt = data["images"], data["matrices"], data["points"]
    cfg = model.config
    ref_hm = torch_heatmaps(model, images, batch_size)
    ref_pts, _ = decode_heatmaps(ref_hm, cfg.input_size, model.weights.refine)

    # The accuracy is measured through the session an app opens (no extra outputs: the backend's fast path), which
    # also checks that the sidecar and the contract inside the artifact agree.
    session = LandmarkSession(artifact, backend=backend, device=device)
    contract = session.contract
    landmarks = contract.outputs == "landmarks"
    points, heatmaps = [], []
    for start in range(0, len(images), batch_size):
        result = session.run_crops(images[start : start + batch_size])
        points.append(result.points)
        if result.heatmaps is not None:
            heatmaps.append(result.heatmaps)
    session.close()
    device = session.device
    pts = np.concatenate(points)

    c = session.contract
    max_hm = float(np.abs(np.concatenate(heatmaps) - ref_hm).max()) if heatmaps else None
    decode_px = None
    if landmarks:
        # A landmarks graph also exposes its inner heatmaps to a second session, to check the in-graph decoding
        # against the host's decoding of those very heatmaps. Exposing an intermediate tensor may change the
        # kernels (LiteRT then runs its reference kernels, whose int8 rounding differs from XNNPACK's), so both
        # sides of this check come from that session.
        probe_session = LandmarkSession(artifact, backend=backend, contract=contract, extra_outputs=(HEATMAPS_NAME,))
        decode_px = 0.0
        for start in range(0, len(images), batch_size):
            result = probe_session.run_crops(images[start : start + batch_size])
            host, _ = decode_heatmaps(np.asarray(result.outputs[HEATMAPS_NAME], dtype=np.float32), c.input_size, c.refine)
            decode_px = max(decode_px, float(np.linalg.norm(result.points - host, axis=-1).max()))
        probe_session.close()
    dist = np.linalg.norm(pts - ref_pts, axis=-1)
    nme_t = float(per_face_nme(crop_points_to_image(ref_pts, matrices), gt).mean() * 100)
    nme_e = float(per_face_nme(crop_points_to_image(pts, matrices), gt).mean() * 100)
    tol = TOLERANCES[precision] if tolerance is None else tolerance
    delta = nme_e - nme_t
    passed = abs(delta) <= tol and (decode_px is None or decode_px <= DECODE_TOLERANCE_PX)
    return ParityReport(
        data=str(faces.folder),
        faces=len(images),
        nme_torch=nme_t,
        nme_export=nme_e,
        delta_nme=delta,
        mean_px=float(dist.mean()),
        max_px=float(dist.max()),
        max_heatmap_diff=max_hm,
        decode_px=decode_px,
        tolerance=tol,
        passed=passed,
        backend_device=device,
    )
