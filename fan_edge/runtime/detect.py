"""Face boxes for photos that come without them, and landmarks from them in one call.

FAN locates landmarks inside a face box; a photo needs a detector first.
:class:`Detector` is the small interface (an image in, boxes and scores out);
:class:`DlibHogDetector` implements it with dlib's HOG + linear SVM frontal
face detector (the ``dlib-bin`` wheel from PyPI, ``pip install
'fan-edge[detect]'``): its weights are compiled into the library, it runs on
any CPU, and it needs neither torch nor a download at run time.

Boxes come out in fan-edge's convention: the box enclosing the face's 68
landmarks, which is what every fan-edge zoo model is trained and evaluated
on. dlib's own box (square, from the brows to the lip, not the jaw) is
mapped onto it by :data:`HOG_TO_LANDMARK_BOX`, the median relation between
the two measured on 300-W HELEN train (tests/test_predict.py measures it
again and checks these figures). :func:`detect_and_predict` can then re-box
each face from its predicted landmarks and predict again
(``refine_passes``), which brings the box all the way to the training
convention: on AFW, one pass brings the bundled default most of the way from
dlib's boxes to its accuracy on ground-truth boxes (figures: docs/runtime.md,
"Face detection").

A detection is kept when its score reaches ``min_score``
(:data:`MIN_SCORE` in ``fan-edge predict``; dlib reports scores from 0, its
own operating point). The default was measured (docs/runtime.md): see
:data:`MIN_SCORE_CHOICE`.

Threads: dlib's detector object is not safe for concurrent calls (its
documentation asks for a lock), so :meth:`DlibHogDetector.detect` holds one.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import BackendError, BoxError, DataError
from .crop import check_boxes
from .image import to_uint8

# dlib HOG box (at the scan size below) -> landmark box: centre shift as a fraction of the box's width and height,
# then width and height factors. Medians over the 843 of 870 HELEN train faces it finds (IoU > 0.3 with the
# landmark box); tests/test_predict.py measures them again.
HOG_TO_LANDMARK_BOX = (0.0218, 0.0614, 0.9797, 0.9353)
# Long side of the image as the detector scans it (bigger photos are shrunk, smaller ones enlarged). dlib's HOG
# window is 80 px, so faces smaller than about 80 / SCAN_SIZE of the long side are missed; cost grows with its square.
SCAN_SIZE = 720
# The lowest detector score ``fan-edge predict`` keeps (``--min-score``), and how it was chosen (docs/runtime.md,
# "Detector score threshold"; measured at SCAN_SIZE). dlib reports detections from 0; scores of real faces run to ~3.
MIN_SCORE = 0.6
MIN_SCORE_CHOICE = (
    "Measured at the default scan size: no non-face scored above 0.38 (backgrounds of 3,413 300-W and LFW photos with "
    "their faces masked), and a badge in an outdoor photo scored 0.53; 0.6 keeps 85% of the 300-W AFW faces dlib "
    "finds (86% of HELEN's, 95% of LFW's frontal ones), and the AFW faces it drops are those with the worst "
    "landmarks (mean NME io 8.7% against 4.2% for those kept)."
)


@dataclass(frozen=True)
class Detections:
    """Face boxes (N, 4) x1, y1, x2, y2 in image pixels (landmark-box convention) and detector scores (N,), best first."""

    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


class Detector(Protocol):
    """Anything that finds faces: an image (any layout :mod:`fan_edge.runtime.image` accepts) in, boxes out."""

    def detect(self, image: np.ndarray) -> Detections: ...


def _box_to_landmark_box(boxes: np.ndarray, mapping: tuple[float, float, float, float]) -> np.ndarray:
    dx, dy, sw, sh = mapping
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 + dx * w
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 + dy * h
    return np.stack([cx - sw * w / 2, cy - sh * h / 2, cx + sw * w / 2, cy + sh * h / 2], axis=1)


class DlibHogDetector:
    """dlib's frontal face detector (HOG + linear SVM; frontal and near-profile faces).

    ``scan_size``: the long side the image is resized to before scanning.
    ``threshold``: dlib's ``adjust_threshold`` (0 is dlib's own operating
    point; lower finds more faces and more false ones). ``mapping``: dlib box
    to landmark box, see :data:`HOG_TO_LANDMARK_BOX`; pass ``(0, 0, 1, 1)``
    for dlib's raw boxes.
    """

    def __init__(
        self,
        scan_size: int = SCAN_SIZE,
        threshold: float = 0.0,
        mapping: tuple[float, float, float, float] = HOG_TO_LANDMARK_BOX,
    ) -> None:
        if importlib.util.find_spec("dlib") is None:
            raise BackendError("face detection needs dlib: pip install 'fan-edge[detect]' (the dlib-bin wheel), or pass boxes")
        import dlib

        if isinstance(scan_size, bool) or not isinstance(scan_size, int) or not 80 <= scan_size <= 8192:
            raise DataError(f"scan size must be an integer from 80 to 8192 pixels, got {scan_size!r}")
        if not np.isfinite(threshold):
            raise DataError(f"detector threshold must be finite, got {threshold!r}")
        self.scan_size = scan_size
        self.threshold = float(threshold)
        self.mapping = tuple(float(v) for v in mapping)
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._lock = threading.Lock()

    def _scan_image(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """The image at scan size (uint8 grey or RGB) and the factor from scan pixels back to image pixels."""
        try:
            pixels = to_uint8(image)
        except ValueError as exc:
            raise DataError(str(exc)) from None
        h, w = pixels.shape[:2]
        factor = self.scan_size / max(h, w)
        step = int(1 / factor) if factor < 0.5 else 1
        if step > 1:  # cheap pre-shrink of very large photos; the bilinear resize finishes the job
            pixels = np.ascontiguousarray(pixels[::step, ::step])
        rows, cols = max(1, round(h * factor)), max(1, round(w * factor))
        scan = self._dlib.resize_image(pixels, rows, cols) if (rows, cols) != pixels.shape[:2] else pixels
        return scan, w / cols

    def detect(self, image: np.ndarray) -> Detections:
        scan, back = self._scan_image(image)
        with self._lock:
            rects, scores, _ = self._detector.run(scan, 0, self.threshold)
        if not rects:
            return Detections(np.zeros((0, 4)), np.zeros(0))
        # dlib rectangles are inclusive pixel ranges: the box spans left..right+1 in pixel edges.
        raw = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], dtype=np.float64)
        # Scan pixel edges to image pixel edges (a plain scale), then to the runtime's centre-based coordinates.
        raw = raw * back - 0.5
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        boxes = _box_to_landmark_box(raw[order], self.mapping)
        return Detections(boxes, np.asarray(scores, dtype=np.float64)[order])


@dataclass(frozen=True)
class Faces:
    """Every face of a photo: the boxes that produced the landmarks, points (N, K, 2), scores (N, K), detector scores (N,);
    ``below_min_score``: the scores of the detections left out for scoring under ``min_score`` (best first)."""

    boxes: np.ndarray
    points: np.ndarray
    scores: np.ndarray
    detector_scores: np.ndarray | None
    below_min_score: np.ndarray | None = None


def landmark_box(points: np.ndarray) -> np.ndarray:
    """(N, 4) boxes enclosing (N, K, 2) points: the convention fan-edge's models are trained on."""
    p = np.asarray(points, dtype=np.float64)
    return np.concatenate([p.min(axis=-2), p.max(axis=-2)], axis=-1)


def check_min_score(min_score: float | None) -> float | None:
    """A detector score bound: a finite number (or None, no bound); a one-line DataError otherwise."""
    if min_score is None:
        return None
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float, np.floating, np.integer)) or not np.isfinite(min_score):
        raise DataError(f"the minimum detector score must be a finite number, got {min_score!r}")
    return float(min_score)


def detect_and_predict(session, image: np.ndarray, detector: Detector | None = None, boxes: np.ndarray | None = None,
                       refine_passes: int = 1, min_score: float | None = None) -> Faces:
    """Landmarks of every face in ``image``: detected (``detector``) unless ``boxes`` are given.

    ``refine_passes`` re-boxes each face from its predicted landmarks and
    predicts again that many times (for models trained on landmark boxes,
    which every fan-edge zoo model is); a pass whose landmarks give a
    degenerate box keeps the previous one. ``min_score``: detections scoring
    below it are left out (their scores in :attr:`Faces.below_min_score`);
    given ``boxes`` are always kept.
    """
    if isinstance(refine_passes, bool) or not isinstance(refine_passes, int) or refine_passes < 0:
        raise DataError(f"refine passes must be a non-negative integer, got {refine_passes!r}")
    min_score = check_min_score(min_score)
    detector_scores = below = None
    if boxes is None:
        if detector is None:
            detector = DlibHogDetector(threshold=min(0.0, min_score) if min_score is not None else 0.0)
        found = detector.detect(image)
        boxes, detector_scores = found.boxes, found.scores
        if min_score is not None:
            keep = detector_scores >= min_score
            below = detector_scores[~keep]
            boxes, detector_scores = boxes[keep], detector_scores[keep]
    points, scores = session.predict(image, boxes)  # checks the image and the boxes: one-line DataErrors
    height, width = np.shape(image)[:2]
    boxes = check_boxes(boxes, width, height)
    for _ in range(refine_passes):
        if len(boxes) == 0:
            break
        refined = landmark_box(points)
        for i, box in enumerate(refined):  # a box the landmarks collapse or scatter into: keep the previous one
            try:
                check_boxes(box, width, height)
            except BoxError:
                refined[i] = boxes[i]
        points, scores = session.predict(image, refined)
        boxes = refined
    return Faces(boxes, points, scores, detector_scores, below)
