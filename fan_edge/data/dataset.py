"""A folder of face images with .pts annotations, cropped the way the runtime crops."""

from __future__ import annotations

import os

import numpy as np

from ..errors import DataError
from ..runtime.crop import CropSpec, apply_affine, compose_affine, crop_matrix, resize_matrix, warp_image
from ..runtime.image import to_network_input
from .augment import AugmentSpec, Photometric, mirror_points, random_similarity
from .heatmaps import gaussian_heatmaps
from ..files.folders import landmark_boxes, read_folder
from ..files.images import load_image


class FaceFolder:
    """Faces of a folder as network inputs, heatmap targets and ground truth.

    Boxes come from the ground-truth landmarks (their enclosing rectangle),
    the documented evaluation convention; the crop is FAN's, from
    :mod:`fan_edge.runtime.crop`. With ``augment`` each item is a fresh random
    draw, reproducible from ``(seed, epoch, index)`` whatever the worker.
    A torch ``Dataset`` by duck typing: it needs no torch itself.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        input_size: int,
        crop: CropSpec | None = None,
        augment: AugmentSpec | None = None,
        sigma: float = 1.0,
        seed: int = 0,
        require_points: bool = True,
        with_heatmaps: bool = True,
        teacher_size: int | None = None,
        heatmap_size: int | None = None,
    ) -> None:
        self.items, self._points = read_folder(root, require_points)  # bad files fail here; each .pts is parsed once
        self.input_size = input_size
        self.crop = crop or CropSpec()
        self.augment = augment
        self.sigma = sigma
        self.seed = seed
        self.epoch = 0
        self.with_heatmaps = with_heatmaps
        # The target grid: FAN's quarter of the input unless the model says otherwise (a fine head's half).
        self.heatmap_size = heatmap_size or input_size // 4
        # A distillation teacher at another resolution gets its own view (see __getitem__).
        self.teacher_size = teacher_size if teacher_size != input_size else None
        self._photometric = Photometric(augment) if augment is not None else None
        # Boxes for faces without .pts (e.g. from a teacher or a detector), by item index.
        self.boxes: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def select(self, keep: list[int]) -> None:
        """Keep only these items (in this order): a training filter, e.g. on a label job's quality record."""
        self.items = [self.items[i] for i in keep]
        self._points = [self._points[i] for i in keep]
        self.boxes = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def points(self, index: int) -> np.ndarray:
        points = self._points[index]
        if points is None:
            raise DataError(f"{self.items[index].image}: no .pts annotation")
        return points.copy()

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        # An index past the end is a further draw of face index % len in the same epoch (a source sampled more than
        # once per epoch): it gets its own augmentation, while draw 0 keeps the (seed, epoch, index) stream.
        draw, index = divmod(int(index), len(self.items))
        item = self.items[index]
        image = load_image(item.image)
        has_points = item.pts is not None
        points = self.points(index) if has_points else None
        if points is not None:
            box = landmark_boxes(points[None])[0]
        elif index in self.boxes:
            box = np.asarray(self.boxes[index], dtype=np.float64)
        else:
            h, w = image.shape[:2]
            box = np.array([0.0, 0.0, w - 1.0, h - 1.0])
        matrix = crop_matrix(box, self.input_size, self.crop)
        flipped = False
        rng = None
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index] + ([draw] if draw else []))
            similarity, flipped = random_similarity(rng, self.input_size, self.augment)
            matrix = compose_affine(similarity, matrix)
        crop = warp_image(image, matrix, self.input_size)
        teacher_crop = None
        if self.teacher_size is not None:
            # The same geometric view cut from the source at the teacher's own resolution: a student crop
            # resampled up would lack the detail the teacher was trained on. It skips the photometric changes,
            # so the teacher labels the face rather than an occluder.
            teacher_crop = warp_image(image, compose_affine(resize_matrix(self.input_size, self.teacher_size), matrix),
                                      self.teacher_size)
        if self._photometric is not None and rng is not None:
            crop = self._photometric(crop, int(rng.integers(2**31)))
        sample: dict[str, np.ndarray] = {
            "image": to_network_input(crop[None])[0],
            "matrix": matrix.astype(np.float64),
            "index": np.int64(index),
            "has_points": np.bool_(has_points),
        }
        if teacher_crop is not None:
            sample["teacher_image"] = to_network_input(teacher_crop[None])[0]
        k = 68 if points is None else len(points)
        crop_points = np.zeros((k, 2))
        if points is not None:
            crop_points = apply_affine(matrix, points)
            if flipped:
                crop_points = mirror_points(crop_points)
            sample["points"] = points.astype(np.float64)
        else:
            sample["points"] = np.full((k, 2), np.nan)
        sample["crop_points"] = crop_points.astype(np.float64)
        if self.with_heatmaps:
            sample["heatmaps"] = (
                gaussian_heatmaps(crop_points, self.input_size, self.sigma, self.heatmap_size)
                if points is not None
                else np.zeros((k, self.heatmap_size, self.heatmap_size), np.float32)
            )
        return sample
