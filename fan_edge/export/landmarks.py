"""FAN's decoding as a graph: heatmaps in, (x, y) crop pixels and peak scores out.

The same arithmetic as :func:`fan_edge.runtime.decode.decode_heatmaps` (the
reference; tests hold the two within 0.01 px), written with operations every
target has: max and min reductions, comparisons, ``where``, floor and
elementwise maths. Choices that make the graph portable and exact:

- The argmax is "the lowest flat index among the cells equal to the max",
  the tie rule of numpy's argmax. Quantized heatmaps have ties at the peak;
  a backend ArgMax/TopK is free to break them another way.
- Indices are integer tensors (int32), so that a float16 weight compression
  (OpenVINO's ``compress_to_fp16``) cannot round a 64x64 map's indices.
- Neighbours are read with one-hot masks (``where(index == i, map, 0)``
  summed), not a gather: exact, and every converter knows the ops.
- No reshape: every tensor stays (N, K, H, W) or (N, K, 1, 1), reductions
  run over (H, W) and drop size-1 axes. A reshape whose shape holds the
  dynamic batch size is what litert-torch's lowering cannot trace (TFLite
  with a dynamic batch axis).
- The Gaussian step uses log ratios (``log(b / c)``) rather than differences
  of logs, which keeps float32 within 1e-6 of the float64 reference.

The exporter appends this head after quantization (int8) or conversion
(fp16), so it always computes in float32.
"""

from __future__ import annotations

import torch
from torch import nn

_EPS = 1e-10  # as in fan_edge.runtime.decode.argmax_gaussian


class LandmarkHead(nn.Module):
    """(N, K, H, W) heatmaps -> landmarks (N, K, 2) crop pixels and scores (N, K)."""

    def __init__(self, input_size: int, heatmap_size: int, refine: str = "quarter") -> None:
        super().__init__()
        if refine not in ("quarter", "gaussian"):
            raise ValueError(f"unknown refinement {refine!r}")
        self.input_size = input_size
        self.heatmap_size = heatmap_size
        self.refine = refine
        self.stride = input_size / heatmap_size
        h = heatmap_size
        # Flat (row-major) index of every cell, laid out as a map: (1, 1, H, W).
        self.register_buffer("index", torch.arange(h * h, dtype=torch.int32).view(1, 1, h, h), persistent=False)

    def _at(self, hm: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """hm at flat index idx (N, K, 1, 1), through a one-hot mask (0 when idx is out of range): (N, K, 1, 1)."""
        mask = self.index == idx
        return torch.where(mask, hm, torch.zeros_like(hm)).sum(dim=(2, 3), keepdim=True)

    @staticmethod
    def _toward_higher(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return (after > before).float() - (after < before).float()

    @staticmethod
    def _gaussian_step(centre: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        c = torch.clamp(centre, min=_EPS)
        lb = torch.log(torch.clamp(before, min=_EPS) / c)  # log(b) - log(c), without cancellation
        la = torch.log(torch.clamp(after, min=_EPS) / c)
        curvature = lb + la
        valid = (centre > _EPS) & (curvature < -1e-9)
        safe = torch.where(valid, curvature, -torch.ones_like(curvature))
        delta = torch.where(valid, 0.5 * (lb - la) / safe, torch.zeros_like(curvature))
        return torch.clamp(delta, -0.5, 0.5)

    def forward(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hm = heatmaps.float()
        h = w = self.heatmap_size
        peak = hm.amax(dim=(2, 3), keepdim=True)  # (N, K, 1, 1)
        big = torch.full_like(self.index, h * w)
        idx = torch.where(hm == peak, self.index, big).amin(dim=(2, 3), keepdim=True)  # (N, K, 1, 1) int32: first maximum
        py = torch.div(idx, w, rounding_mode="floor")
        px = idx - py * w
        centre = peak
        left, right = self._at(hm, idx - 1), self._at(hm, idx + 1)
        up, down = self._at(hm, idx - w), self._at(hm, idx + w)
        inner_x = (px > 0) & (px < w - 1)
        inner_y = (py > 0) & (py < h - 1)
        zero = torch.zeros_like(centre)
        if self.refine == "quarter":
            dx = torch.where(inner_x, 0.25 * self._toward_higher(left, right), zero)
            dy = torch.where(inner_y, 0.25 * self._toward_higher(up, down), zero)
        else:
            dx = torch.where(inner_x, self._gaussian_step(centre, left, right), zero)
            dy = torch.where(inner_y, self._gaussian_step(centre, up, down), zero)
        offset = (self.stride - 1.0) / 2.0
        x = (px.float() + dx) * self.stride + offset
        y = (py.float() + dy) * self.stride + offset
        # (N, K, 1, 1) -> (N, K, 1) by a reduction over the size-1 axis (exact), then (N, K, 2) and (N, K).
        return torch.cat([x.sum(dim=-1), y.sum(dim=-1)], dim=-1), centre.sum(dim=(2, 3))
