"""Landmark accuracy of a PyTorch FAN, or of an exported artifact, on a folder of annotated faces.

This is the project's own evaluation: boxes from the ground-truth landmarks,
FAN's crop from :mod:`fan_edge.runtime.crop`, the decoder from
:mod:`fan_edge.runtime.decode`, metrics from :mod:`fan_edge.data.metrics`.
Model cards, the zoo table and the export parity report all come from here.
An artifact (:func:`evaluate_session`) runs through
:class:`~fan_edge.runtime.LandmarkSession`, the code an app runs, with its
contract's crop and decoding; that path needs no torch.

Faces are found recursively (:func:`fan_edge.files.folders.scan_folder`), so
:attr:`Evaluation.folders` records which folder each face came from, and
``log`` gets a one-line warning when a scored folder is named like a
training split (:func:`training_folders`): a score on training faces
flatters the model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data.dataset import FaceFolder
from .data.metrics import LandmarkScores, score
from .errors import DataError
from .limits import check_batch
from .progress import progress_bar
from .runtime.decode import crop_points_to_image, decode_heatmaps

if TYPE_CHECKING:
    from .models.fan import FAN
    from .runtime.session import LandmarkSession

Log = Callable[[str], None]
# A folder whose name says it is a training split (helen_train, lfpw/trainset, train/): scoring it flatters a model.
TRAINING_NAME = re.compile(r"train", re.IGNORECASE)


@dataclass
class Evaluation:
    scores: LandmarkScores
    predictions: np.ndarray  # (N, K, 2) image pixels
    ground_truth: np.ndarray  # (N, K, 2)
    names: list[str]
    folders: list[str] = field(default_factory=list)  # each face's folder relative to the data folder ("." itself)
    backend: str = "pytorch"  # what ran the model: "pytorch", or the runtime backend of an artifact
    device: str = "cpu"

    def by_folder(self) -> dict[str, LandmarkScores]:
        """The scores of each folder's faces, by folder (sorted)."""
        folders = np.asarray(self.folders)
        return {f: score(self.predictions[folders == f], self.ground_truth[folders == f]) for f in sorted(set(self.folders))}


def face_folders(dataset: FaceFolder, data_dir: str | os.PathLike[str]) -> list[str]:
    """Each face's folder relative to ``data_dir`` (POSIX form; "." for ``data_dir`` itself)."""
    root = Path(data_dir)
    return [item.image.parent.relative_to(root).as_posix() for item in dataset.items]


def training_folders(folders: list[str], data_dir: str | os.PathLike[str]) -> list[str]:
    """The scored folders named like a training split (the data folder's own name counts for ".")."""
    own = Path(os.path.abspath(data_dir)).name
    return [f for f in sorted(set(folders)) if any(TRAINING_NAME.search(part) for part in [own, *Path(f).parts] if part != ".")]


def _warn_training(folders: list[str], data_dir: str | os.PathLike[str], log: Log | None) -> None:
    flagged = training_folders(folders, data_dir)
    if log is None or not flagged:
        return
    count = sum(f in flagged for f in folders)
    names = ", ".join(Path(os.path.abspath(data_dir)).name if f == "." else f for f in flagged)
    log(f"warning: {count} of {len(folders)} faces are in {names}, named like training data: a score on faces a model "
        "was trained on flatters it (point --data at a held-out folder, e.g. 300w/afw)")


def _check_landmarks(dataset: FaceFolder, data_dir: str | os.PathLike[str], count: int, what: str) -> None:
    """The model's landmarks against the annotations', before any face is run (rather than a shape error after)."""
    annotated = sorted({len(dataset.points(i)) for i in range(len(dataset))})
    if annotated != [count]:
        raise DataError(f"{what} gives {count} landmarks but the .pts under {data_dir} have {' or '.join(map(str, annotated))}: "
                        "score it on faces annotated with its own landmarks")


def _batches(dataset: FaceFolder, batch_size: int):
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    yield from loader


def _numpy_batches(dataset: FaceFolder, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The faces in order, ``batch_size`` at a time, each field stacked (what the DataLoader gives, without torch)."""
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        yield {k: np.stack([s[k] for s in samples]) for k in ("image", "matrix", "points")}


def predict_dataset(
    model: FAN, dataset: FaceFolder, batch_size: int = 16, device: str = "cpu", refine: str | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and ground-truth image-pixel points for every face of ``dataset`` (a bar on stderr with ``progress``)."""
    import torch

    was_training = model.training
    model.eval()
    preds, gts = [], []
    bar = progress_bar(len(dataset), "eval", "face", enabled=progress)
    try:
        with torch.no_grad():
            for batch in _batches(dataset, batch_size):
                heatmaps = model(batch["image"].to(device)).float().cpu().numpy()
                crop_pts, _ = decode_heatmaps(heatmaps, dataset.input_size, refine or model.weights.refine)
                preds.append(crop_points_to_image(crop_pts, batch["matrix"].numpy()))
                gts.append(batch["points"].numpy())
                bar.update(len(heatmaps))
    finally:
        model.train(was_training)
        bar.close()
    return np.concatenate(preds), np.concatenate(gts)


def evaluate_model(
    model: FAN, data_dir: str | os.PathLike[str], batch_size: int = 16, device: str = "cpu", progress: bool = False,
    log: Log | None = None,
) -> Evaluation:
    """Score ``model`` on every annotated face under ``data_dir``, with its weights' crop and refinement (``model.weights``).

    ``batch_size`` is bounded (:func:`fan_edge.limits.check_batch`) before any face is read. ``progress``: a bar
    on stderr; ``log``: the training-folder warning, before the faces are run.
    """
    check_batch(batch_size, model.config.input_size)
    dataset = FaceFolder(data_dir, model.config.input_size, crop=model.weights.crop, with_heatmaps=False)
    _check_landmarks(dataset, data_dir, model.config.num_landmarks, "the model")
    folders = face_folders(dataset, data_dir)
    _warn_training(folders, data_dir, log)
    preds, gts = predict_dataset(model, dataset, batch_size, device, progress=progress)
    return Evaluation(score(preds, gts), preds, gts, [item.image.name for item in dataset.items], folders)


def evaluate_session(
    session: LandmarkSession, data_dir: str | os.PathLike[str], batch_size: int = 16, progress: bool = False,
    log: Log | None = None,
) -> Evaluation:
    """Score an exported artifact, open as ``session``, on every annotated face under ``data_dir``: the crop, size
    and decoding its contract says, through the runtime (torch-free). Otherwise as :func:`evaluate_model`."""
    contract = session.contract
    check_batch(batch_size, contract.input_size)
    dataset = FaceFolder(data_dir, contract.input_size, crop=contract.crop, with_heatmaps=False)
    _check_landmarks(dataset, data_dir, contract.num_landmarks, str(session.path))
    folders = face_folders(dataset, data_dir)
    _warn_training(folders, data_dir, log)
    preds, gts = [], []
    bar = progress_bar(len(dataset), "eval", "face", enabled=progress)
    try:
        for batch in _numpy_batches(dataset, batch_size):
            crop_pts = session.run_crops(batch["image"]).points
            preds.append(crop_points_to_image(crop_pts, batch["matrix"]))
            gts.append(batch["points"])
            bar.update(len(crop_pts))
    finally:
        bar.close()
    pred, gt = np.concatenate(preds), np.concatenate(gts)
    return Evaluation(score(pred, gt), pred, gt, [item.image.name for item in dataset.items], folders,
                      backend=session.backend.name, device=session.device)


def artifact_suffixes() -> list[str]:
    """The suffixes of the artifacts the runtime runs (``.onnx``, ``.tflite``, ``.xml``...), sorted."""
    from .runtime.backends import BACKENDS

    return sorted({s for entry in BACKENDS.values() for s in entry.suffixes})


def evaluate(
    model: str | os.PathLike[str], data_dir: str | os.PathLike[str], *, batch_size: int = 16, backend: str = "auto",
    device: str = "auto", threads: int | None = None, trust: bool = False, progress: bool = False, log: Log | None = None,
) -> Evaluation:
    """Score a registry name, a checkpoint or an exported artifact on every annotated face under ``data_dir``.

    An artifact (by its suffix, :func:`artifact_suffixes`) runs through the runtime with its contract
    (:func:`evaluate_session`; torch-free) on ``backend``/``device`` with ``threads``; a name or a checkpoint runs in
    PyTorch on the CPU (:func:`evaluate_model`), and the runtime's options are a ConfigError for it.
    """
    from .errors import ConfigError

    if Path(model).suffix.lower() in artifact_suffixes():
        from .runtime.session import LandmarkSession

        with LandmarkSession(model, backend=backend, device=device, threads=threads) as session:
            return evaluate_session(session, data_dir, batch_size=batch_size, progress=progress, log=log)
    if backend != "auto" or device != "auto" or threads is not None:
        raise ConfigError(f"--backend, --device and --threads are for exported artifacts ({', '.join(artifact_suffixes())}); "
                          f"{model} runs in PyTorch on the CPU")
    from .models import create_model

    net = create_model(str(model), trust=trust)
    return evaluate_model(net, data_dir, batch_size=batch_size, progress=progress, log=log)
