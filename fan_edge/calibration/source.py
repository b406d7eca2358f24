"""Calibration and verification faces: a folder of images with .pts, cropped exactly as the runtime crops.

:class:`FaceCrops` picks a bounded, evenly spread (and seeded) selection of
the annotated faces of a folder, crops each one with the model's crop
(:class:`fan_edge.data.FaceFolder`, boxes from the ground-truth points, no
augmentation) and serves NCHW float32 batches, plus adapters for the
post-training quantizers: an ONNX Runtime ``CalibrationDataReader``, an
``nncf.Dataset`` and ai-edge-quantizer's calibration data (TFLite). The export's parity report reads the same crops, with their
crop matrices and ground truth. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dataset import FaceFolder
from ..errors import DataError
from ..runtime.crop import CropSpec


def spread_indices(total: int, count: int | None, seed: int = 0) -> np.ndarray:
    """``count`` indices spread evenly over ``range(total)`` (all of them when count is None or >= total).

    One index per equal stretch of the folder, at a seeded offset inside the
    stretch: deterministic, and it covers the whole folder rather than its
    first files (which are often one subject or one source).
    """
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    if count is None or count >= total:
        return np.arange(total, dtype=np.int64)
    if count < 1:
        raise DataError(f"the number of faces must be positive, got {count}")
    step = total / count
    offset = np.random.default_rng(seed).uniform(0.0, step)
    return np.minimum(np.floor(offset + step * np.arange(count)).astype(np.int64), total - 1)


class FaceCrops:
    """A bounded selection of a folder's annotated faces as network inputs.

    ``count`` faces at most (None: all), cropped at ``input_size`` with
    ``crop``; loaded once on first use and kept in memory.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        input_size: int,
        crop: CropSpec | None = None,
        count: int | None = 128,
        seed: int = 0,
        batch_size: int = 8,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: not a folder")
        self.dataset = FaceFolder(self.folder, input_size, crop=crop or CropSpec(), with_heatmaps=False)
        self.indices = spread_indices(len(self.dataset), count, seed)
        self.input_size = input_size
        self.batch_size = max(1, int(batch_size))
        self._loaded: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def load(self) -> dict[str, Any]:
        """Every selected face: ``images`` (N, 3, S, S) float32, ``matrices`` (N, 2, 3), ``points`` (N, K, 2), ``names``."""
        if self._loaded is None:
            samples = [self.dataset[int(i)] for i in self.indices]
            self._loaded = {
                "images": np.stack([s["image"] for s in samples]).astype(np.float32),
                "matrices": np.stack([s["matrix"] for s in samples]),
                "points": np.stack([s["points"] for s in samples]),
                "names": [self.dataset.items[int(i)].image.name for i in self.indices],
            }
        return self._loaded

    def batches(self, batch_size: int | None = None) -> Iterator[np.ndarray]:
        """NCHW float32 batches of crops, in [0, 1] RGB (FAN's input)."""
        images = self.load()["images"]
        b = batch_size or self.batch_size
        for start in range(0, len(images), b):
            yield images[start : start + b]

    def onnxruntime_reader(self, input_name: str = "input"):
        """An ``onnxruntime.quantization.CalibrationDataReader`` over these crops."""
        from onnxruntime.quantization import CalibrationDataReader

        source = self

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._iter: Iterator[np.ndarray] | None = None

            def get_next(self) -> dict[str, np.ndarray] | None:
                if self._iter is None:
                    self._iter = source.batches()
                batch = next(self._iter, None)
                return None if batch is None else {input_name: batch}

            def rewind(self) -> None:
                self._iter = None

        return _Reader()

    def nncf_dataset(self):
        """An ``nncf.Dataset`` of NCHW batches (for ``nncf.quantize`` on an OpenVINO model)."""
        import nncf

        return nncf.Dataset(list(self.batches()))

    def litert_calibration(self, input_name: str = "input", layout: str = "NCHW", signature: str = "serving_default"):
        """ai-edge-quantizer's calibration data: ``{signature: [{input_name: batch}, ...]}``, NHWC when asked."""
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"unknown layout {layout!r}")
        batches = [np.ascontiguousarray(b.transpose(0, 2, 3, 1) if layout == "NHWC" else b) for b in self.batches()]
        return {signature: [{input_name: b} for b in batches]}
