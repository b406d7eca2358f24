"""Landmark accuracy of a PyTorch FAN on a folder of annotated faces.

This is the project's own evaluation: boxes from the ground-truth landmarks,
FAN's crop from :mod:`fan_edge.runtime.crop`, the decoder from
:mod:`fan_edge.runtime.decode`, metrics from :mod:`fan_edge.data.metrics`.
Model cards, the zoo table and the export parity report all come from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ..data.dataset import FaceFolder
from ..data.metrics import LandmarkScores, score
from ..limits import check_batch
from ..models.fan import FAN
from ..runtime.decode import crop_points_to_image, decode_heatmaps


@dataclass
class Evaluation:
    scores: LandmarkScores
    predictions: np.ndarray  # (N, K, 2) image pixels
    ground_truth: np.ndarray  # (N, K, 2)
    names: list[str]


def _batches(dataset: FaceFolder, batch_size: int):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    yield from loader


@torch.no_grad()
def predict_dataset(
    model: FAN, dataset: FaceFolder, batch_size: int = 16, device: str = "cpu", refine: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and ground-truth image-pixel points for every face of ``dataset``."""
    was_training = model.training
    model.eval()
    preds, gts = [], []
    try:
        for batch in _batches(dataset, batch_size):
            heatmaps = model(batch["image"].to(device)).float().cpu().numpy()
            crop_pts, _ = decode_heatmaps(heatmaps, dataset.input_size, refine or model.config.refine)
            preds.append(crop_points_to_image(crop_pts, batch["matrix"].numpy()))
            gts.append(batch["points"].numpy())
    finally:
        model.train(was_training)
    return np.concatenate(preds), np.concatenate(gts)


def evaluate_model(model: FAN, data_dir: str | os.PathLike[str], batch_size: int = 16, device: str = "cpu") -> Evaluation:
    """Score ``model`` on every annotated face under ``data_dir``, with its own crop settings.

    ``batch_size`` is bounded (:func:`fan_edge.limits.check_batch`) before any face is read.
    """
    check_batch(batch_size, model.config.input_size)
    dataset = FaceFolder(data_dir, model.config.input_size, crop=model.config.crop, with_heatmaps=False)
    preds, gts = predict_dataset(model, dataset, batch_size, device)
    return Evaluation(score(preds, gts), preds, gts, [item.image.name for item in dataset.items])
