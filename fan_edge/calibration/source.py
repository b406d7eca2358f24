"""Calibration and verification faces: a folder of images, cropped exactly as the runtime crops.

:class:`FaceCrops` picks a bounded, seeded selection of a folder's faces,
crops each one with the model's crop (:class:`fan_edge.data.FaceFolder`, no
augmentation) and serves them as NCHW float32 arrays. It is the one source
behind every int8 consumer, so that each target is calibrated on the same
faces in the same way:

- :meth:`FaceCrops.onnxruntime_reader`: an ONNX Runtime ``CalibrationDataReader``;
- :meth:`FaceCrops.nncf_dataset`: an ``nncf.Dataset`` (numpy for an OpenVINO
  model, torch tensors for a PyTorch model: NNCF post-training and
  quantization-aware training);
- :meth:`FaceCrops.litert_calibration`: ai-edge-quantizer's calibration data (TFLite);
- :meth:`FaceCrops.tensors`: torch tensors (PT2E ``prepare_pt2e`` calibration,
  fan-edge's own fake-quant simulation).

The quantizer adapters serve **one face per sample**: each target's range
estimator then sees per-face minima and maxima and averages them (ONNX
Runtime's moving-average MinMax, NNCF's MEAN_MINMAX, ai-edge-quantizer's
moving average), the recipe of :mod:`fan_edge.export.int8`. The export's
parity report reads the same class.

Boxes come from the ground-truth points (``.pts``). Images without points
are used only when a ``detector`` gives their box
(:class:`fan_edge.runtime.detect.Detector`; ``"auto"`` builds dlib's HOG
detector when such images are present), the face with the best score per
image; they then lack ground truth (calibration only).

Selection (``select``): ``"spread"`` takes one face per equal stretch of the
folder (the verification faces); ``"cover"`` describes up to
``candidates`` faces by head pose and lighting and keeps those nearest the
k-means centres of that description (:mod:`fan_edge.calibration.selection`),
the calibration faces. Torch-free (torch is imported only by :meth:`tensors`
and the torch form of :meth:`nncf_dataset`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dataset import FaceFolder
from ..files.images import load_image
from ..errors import DataError
from ..files.folders import spread_indices
from ..runtime.crop import CropSpec
from .selection import cover, lighting, pose_proxies

SELECTIONS = ("spread", "cover")
CANDIDATES_PER_FACE = 4  # "cover" describes up to this many candidates per face wanted (bounds the folder scan)


def _make_detector(detector: Any) -> Any:
    if detector == "auto":
        from ..runtime.detect import DlibHogDetector

        return DlibHogDetector()
    if not callable(getattr(detector, "detect", None)):
        raise DataError(f"a detector must have a detect(image) method, got {type(detector).__name__}")
    return detector


class FaceCrops:
    """A bounded selection of a folder's faces as network inputs.

    ``count`` faces at most (None: all), cropped at ``input_size`` with
    ``crop``; ``select`` and ``detector`` as in the module docstring. Loaded
    once on first use and kept in memory.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        input_size: int,
        crop: CropSpec | None = None,
        count: int | None = 128,
        seed: int = 0,
        batch_size: int = 8,
        select: str = "spread",
        detector: Any = None,
        candidates: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: not a folder")
        if select not in SELECTIONS:
            raise DataError(f"unknown face selection {select!r}; expected one of: {', '.join(SELECTIONS)}")
        if count is not None and count < 1:
            raise DataError(f"the number of faces must be positive, got {count}")
        self.dataset = FaceFolder(self.folder, input_size, crop=crop or CropSpec(), with_heatmaps=False,
                                  require_points=detector is None)
        labeled = np.array([item.pts is not None for item in self.dataset.items])
        self.input_size = input_size
        self.batch_size = max(1, int(batch_size))
        self.select = select
        self.seed = seed
        self._loaded: dict[str, Any] | None = None
        pool = np.flatnonzero(labeled) if detector is None or labeled.all() else np.arange(len(labeled))
        if count is not None and select == "cover":
            limit = candidates if candidates is not None else CANDIDATES_PER_FACE * count
            pool = pool[spread_indices(len(pool), max(limit, count), seed)]
        elif count is not None:
            pool = pool[spread_indices(len(pool), count, seed)]
        if not labeled[pool].all():
            pool = self._box_unlabeled(pool, _make_detector(detector))
        if count is not None and select == "cover" and len(pool) > count:
            pool = pool[cover(self.describe(pool), count, seed)]
        self.indices = np.asarray(pool, dtype=np.int64)

    def _box_unlabeled(self, pool: np.ndarray, detector: Any) -> np.ndarray:
        """Boxes from ``detector`` for the faces of ``pool`` without points; faces it finds nothing in are dropped."""
        kept = []
        for i in pool:
            item = self.dataset.items[int(i)]
            if item.pts is None:
                found = detector.detect(load_image(item.image))
                if len(found) == 0:
                    continue
                self.dataset.boxes[int(i)] = np.asarray(found.boxes[0], dtype=np.float64)
            kept.append(int(i))
        if not kept:
            raise DataError(f"{self.folder}: the detector found no face in the images without .pts")
        return np.asarray(kept, dtype=np.int64)

    def describe(self, indices: np.ndarray | None = None) -> np.ndarray:
        """(N, 6) head pose proxies and lighting of faces ``indices`` (default: the selection); see selection.py."""
        idx = self.indices if indices is None else np.asarray(indices)
        samples = [self.dataset[int(i)] for i in idx]
        points = np.stack([s["points"] for s in samples])
        crops = np.stack([s["image"] for s in samples])
        return np.concatenate([pose_proxies(points), lighting(crops)], axis=1)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labeled(self) -> bool:
        """Whether every selected face has ground-truth points (needed to measure accuracy on them)."""
        return all(self.dataset.items[int(i)].pts is not None for i in self.indices)

    def load(self) -> dict[str, Any]:
        """Every selected face: ``images`` (N, 3, S, S) float32, ``matrices`` (N, 2, 3), ``points`` (N, K, 2; NaN
        without .pts), ``names``."""
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

    def samples(self) -> list[np.ndarray]:
        """One (1, 3, S, S) array per face: what every quantizer adapter below serves (per-face statistics)."""
        return list(self.batches(1))

    def onnxruntime_reader(self, input_name: str = "input"):
        """An ``onnxruntime.quantization.CalibrationDataReader`` over these crops, one face per sample."""
        from onnxruntime.quantization import CalibrationDataReader

        source = self

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._iter: Iterator[np.ndarray] | None = None

            def get_next(self) -> dict[str, np.ndarray] | None:
                if self._iter is None:
                    self._iter = iter(source.samples())
                batch = next(self._iter, None)
                return None if batch is None else {input_name: batch}

            def rewind(self) -> None:
                self._iter = None

        return _Reader()

    def nncf_dataset(self, torch_tensors: bool = False):
        """An ``nncf.Dataset``, one face per sample: numpy for an OpenVINO model, torch tensors for a PyTorch one."""
        import nncf

        items: list[Any] = self.samples()
        if torch_tensors:
            import torch

            items = [torch.from_numpy(x) for x in items]
        return nncf.Dataset(items)

    def litert_calibration(self, input_name: str = "input", layout: str = "NCHW", signature: str = "serving_default"):
        """ai-edge-quantizer's calibration data: ``{signature: [{input_name: face}, ...]}``, NHWC when asked."""
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"unknown layout {layout!r}")
        faces = [np.ascontiguousarray(b.transpose(0, 2, 3, 1) if layout == "NHWC" else b) for b in self.samples()]
        return {signature: [{input_name: b} for b in faces]}

    def tensors(self, batch_size: int = 1, transform: Callable[[Any], Any] | None = None) -> list[Any]:
        """torch tensors of the crops (PT2E calibration, fake-quant simulation), ``transform`` applied to each."""
        import torch

        out = [torch.from_numpy(np.ascontiguousarray(b)) for b in self.batches(batch_size)]
        return [transform(t) for t in out] if transform else out


def calibration_faces(
    folder: str | os.PathLike[str], input_size: int, crop: CropSpec | None = None, count: int | None = 128,
    seed: int = 0, detector: Any = "auto",
) -> FaceCrops:
    """The int8 calibration set of a folder: ``count`` faces covering pose and lighting (``select="cover"``);
    images without .pts are boxed by ``detector`` ("auto": dlib's HOG detector, built only if such images exist)."""
    return FaceCrops(folder, input_size, crop, count=count, seed=seed, select="cover", detector=detector)
