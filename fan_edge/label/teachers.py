"""Teachers: models that put 68 landmarks on a face box, each on the original and on the mirrored face.

Two kinds label faces for ``fan-edge label``:

- :class:`FanTeacher`: any FAN checkpoint or zoo name (the official 2DFAN-4
  ``.pth.tar`` included), run by PyTorch through the project's own crop
  (:mod:`fan_edge.runtime.crop`) and decoder (:mod:`fan_edge.runtime.decode`),
  so a label is exactly what evaluation and the runtime would predict. The
  detector's box is refined once from the landmarks
  (:func:`fan_edge.runtime.detect.detect_and_predict`, as ``fan-edge
  predict`` does): zoo models are trained on landmark boxes, which the
  detector only approximates.
- :class:`DlibTeacher`: dlib's 68-point ERT shape predictor
  (``shape_predictor_68_face_landmarks.dat``, from the ``face-recognition-models``
  wheel, or any such ``.dat`` path). It was trained with dlib's own HOG
  boxes, so a box in fan-edge's landmark-box convention is mapped back to
  dlib's rectangle by inverting :data:`~fan_edge.runtime.detect.HOG_TO_LANDMARK_BOX`.
  dlib returns integer pixel positions (pixel centres, 0-based, the same
  convention as fan-edge); the face is enlarged before prediction
  (:data:`DLIB_FACE_SIDE`) so that rounding to whole pixels costs a fraction
  of a source pixel instead of up to half of one.

Mirroring: a teacher's prediction on the horizontally mirrored face, mapped
back and relabelled with the 68-point mirror permutation, should match its
prediction on the face itself; where it does not, the teacher is unsure
(the flip-consistency figure of :mod:`fan_edge.label.quality`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import BackendError, ConfigError
from ..runtime.crop import check_boxes, crop_matrices, warp_image
from ..runtime.decode import crop_points_to_image, decode_heatmaps
from ..runtime.detect import HOG_TO_LANDMARK_BOX, detect_and_predict
from ..runtime.image import ImageSource, to_network_input, to_uint8
from ..runtime.scheme import NUM_LANDMARKS, mirror_permutation

if TYPE_CHECKING:
    from ..models.fan import FAN

DLIB_NAME = "dlib"
# dlib's predictor returns whole pixels; the face is resized so that dlib's rectangle is about this many pixels wide
# before prediction (never shrunk), which makes that rounding a fraction of a source pixel on small faces. On the 317
# AFW faces its HOG detector finds (about 160 px wide): NME io 4.24% as dlib is usually called, 4.23% at 256, 4.18% at 512.
DLIB_FACE_SIDE = 512
# Context kept around dlib's rectangle when the face is cut out and resized: its features may look a little outside.
DLIB_MARGIN = 0.5


@dataclass(frozen=True)
class TeacherOutput:
    """One teacher's landmarks for N faces: (N, 68, 2) image pixels, the same from the mirrored face (or None), and
    the (N, 4) boxes the teacher finally predicted from (after its own refinement)."""

    points: np.ndarray
    flipped: np.ndarray | None
    boxes: np.ndarray


class Teacher(Protocol):
    """What the labeler needs of a teacher: a name for the records and landmarks for face boxes."""

    name: str

    def label(self, image: np.ndarray, boxes: np.ndarray, flip: bool = True) -> TeacherOutput:
        """Landmarks of each (N, 4) box (fan-edge's landmark-box convention) in an image as read from disk."""
        ...


def _unflip(points: np.ndarray, width: float) -> np.ndarray:
    """Points predicted on an image mirrored about ``x = (width - 1) / 2`` back onto the original, relabelled."""
    out = np.array(points, dtype=np.float64)
    out[..., 0] = (width - 1.0) - out[..., 0]
    return out[..., mirror_permutation(), :]


class FanTeacher:
    """A FAN run by PyTorch on the project's crop and decoder (``refine_passes``: re-boxings from its own landmarks)."""

    def __init__(self, name: str, model: "FAN", device: str = "cpu", refine_passes: int = 1) -> None:
        import torch

        if model.config.num_landmarks != NUM_LANDMARKS:
            raise ConfigError(f"teacher {name}: {model.config.num_landmarks} landmarks; labels are the 68-point 300-W markup")
        self.name = name
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.weights = model.weights  # the crop and refinement its weights were trained with
        self.refine_passes = refine_passes

    def _run(self, source: ImageSource, boxes: np.ndarray, flip: bool) -> tuple[np.ndarray, np.ndarray]:
        """(N, K, 2) image points and (N, K) scores; ``flip`` predicts on each crop mirrored."""
        import torch

        size = self.config.input_size
        matrices = crop_matrices(boxes, size, self.weights.crop)
        crops = np.stack([warp_image(source.pixels, m, size) for m in matrices])
        x = to_network_input(source.finish(crops))
        if flip:
            x = np.ascontiguousarray(x[..., ::-1])
        with torch.inference_mode():
            heatmaps = self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()
        points, scores = decode_heatmaps(heatmaps, size, self.weights.refine)
        if flip:
            points = _unflip(points, size)
            scores = scores[:, mirror_permutation()]
        return crop_points_to_image(points, matrices), scores

    def predict(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Session-like call (what :func:`~fan_edge.runtime.detect.detect_and_predict` drives): points and scores."""
        source = ImageSource.from_array(image)
        b = check_boxes(boxes, source.width, source.height)
        if len(b) == 0:
            return np.zeros((0, NUM_LANDMARKS, 2)), np.zeros((0, NUM_LANDMARKS), np.float32)
        return self._run(source, b, flip=False)

    def label(self, image: np.ndarray, boxes: np.ndarray, flip: bool = True) -> TeacherOutput:
        faces = detect_and_predict(self, image, boxes=np.asarray(boxes, dtype=np.float64), refine_passes=self.refine_passes)
        flipped = None
        if flip:
            flipped = (self._run(ImageSource.from_array(image), faces.boxes, flip=True)[0] if len(faces.boxes)
                       else np.zeros((0, NUM_LANDMARKS, 2)))
        return TeacherOutput(faces.points, flipped, faces.boxes)


def landmark_box_to_dlib(boxes: np.ndarray, mapping: tuple[float, float, float, float] = HOG_TO_LANDMARK_BOX) -> np.ndarray:
    """Invert the detector's dlib-box -> landmark-box mapping: (N, 4) boxes in dlib's own convention (pixel centres).

    The exact inverse of :func:`fan_edge.runtime.detect._box_to_landmark_box`, so a box that came from
    :class:`~fan_edge.runtime.detect.DlibHogDetector` goes back to the rectangle dlib found.
    """
    dx, dy, sw, sh = mapping
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = (b[:, 2] - b[:, 0]) / sw, (b[:, 3] - b[:, 1]) / sh
    cx = (b[:, 0] + b[:, 2]) / 2 - dx * w
    cy = (b[:, 1] + b[:, 3]) / 2 - dy * h
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def dlib_shape_predictor_path() -> Path:
    """The 68-point model shipped in the ``face-recognition-models`` wheel, or a one-line error saying how to get it.

    Found beside the package rather than through its own helper, which imports ``pkg_resources`` (gone from
    setuptools 81 on, so the import fails in a current environment).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / "models" / "shape_predictor_68_face_landmarks.dat"
        if path.is_file():
            return path
    raise BackendError("--teacher dlib needs dlib's 68-point shape predictor: pip install 'fan-edge[label]' "
                       "(the face-recognition-models wheel), or give a shape_predictor_68_face_landmarks.dat path")


class DlibTeacher:
    """dlib's 68-point ERT shape predictor, fed dlib-convention rectangles and enlarged faces (see the module notes)."""

    def __init__(self, model_path: str | Path | None = None, name: str = DLIB_NAME,
                 mapping: tuple[float, float, float, float] = HOG_TO_LANDMARK_BOX, face_side: int = DLIB_FACE_SIDE) -> None:
        if importlib.util.find_spec("dlib") is None:
            raise BackendError("--teacher dlib needs dlib: pip install 'fan-edge[label]' (the dlib-bin wheel)")
        import dlib

        path = Path(model_path) if model_path is not None else dlib_shape_predictor_path()
        if not path.is_file():
            raise ConfigError(f"{path}: no such dlib shape predictor file")
        try:
            self._predictor = dlib.shape_predictor(str(path))
        except RuntimeError as exc:
            raise ConfigError(f"{path}: not a dlib shape predictor ({str(exc).splitlines()[0][:120] if str(exc) else 'unreadable'})") from None
        parts = self._predictor(np.zeros((16, 16), np.uint8), dlib.rectangle(2, 2, 13, 13)).num_parts
        if parts != NUM_LANDMARKS:
            raise ConfigError(f"{path}: a {parts}-point shape predictor; labels are the 68-point 300-W markup")
        self._dlib = dlib
        self.name = name
        self.mapping = mapping
        self.face_side = face_side

    def _one(self, pixels: np.ndarray, box: np.ndarray, flip: bool) -> np.ndarray:
        """(68, 2) image points for one dlib-convention box, from a resized (and optionally mirrored) cut-out of the face.

        dlib places its shape in the rectangle's corner pixels (left..right, top..bottom: centres, inclusive), so
        those corners are what goes through the resize: the shape then lands where it would in the photo itself.
        """
        import cv2

        height, width = pixels.shape[:2]
        x1, y1, x2, y2 = (float(v) for v in box)  # pixel edges as centre coordinates: x1 = left - 0.5, x2 = right + 0.5
        side = max(x2 - x1, y2 - y1, 1.0)
        pad = DLIB_MARGIN * side
        # Cut-out: whole pixels [c0, c1) x [r0, r1) around the box, inside the image.
        c0, r0 = max(int(np.floor(x1 - pad)), 0), max(int(np.floor(y1 - pad)), 0)
        c1, r1 = min(int(np.ceil(x2 + pad)) + 1, width), min(int(np.ceil(y2 + pad)) + 1, height)
        region = pixels[r0:r1, c0:c1]
        region_w = region.shape[1]
        cols = np.array([x1 + 0.5, x2 - 0.5]) - c0  # dlib's corner pixels (as centres) in the cut-out
        rows = np.array([y1 + 0.5, y2 - 0.5]) - r0
        if flip:
            region = region[:, ::-1]
            cols = (region_w - 1.0) - cols[::-1]
        factor = max(1.0, self.face_side / side)
        new_w, new_h = max(1, round(region_w * factor)), max(1, round(region.shape[0] * factor))
        region = np.ascontiguousarray(region)
        scaled = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_LINEAR) if factor > 1.0 else region
        fx, fy = new_w / region_w, new_h / region.shape[0]
        # Pixel centres through the resize (cv2.resize keeps pixel areas aligned): u' = (u + 0.5) * f - 0.5.
        sc, sr = (cols + 0.5) * fx - 0.5, (rows + 0.5) * fy - 0.5
        rect = self._dlib.rectangle(int(round(sc[0])), int(round(sr[0])), int(round(sc[1])), int(round(sr[1])))
        shape = self._predictor(scaled, rect)
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
        pts[:, 0] = (pts[:, 0] + 0.5) / fx - 0.5
        pts[:, 1] = (pts[:, 1] + 0.5) / fy - 0.5
        if flip:
            pts = _unflip(pts, region_w)
        pts[:, 0] += c0
        pts[:, 1] += r0
        return pts

    def label(self, image: np.ndarray, boxes: np.ndarray, flip: bool = True) -> TeacherOutput:
        pixels = to_uint8(image)
        b = check_boxes(boxes, pixels.shape[1], pixels.shape[0])
        raw = landmark_box_to_dlib(b, self.mapping)
        points = np.stack([self._one(pixels, r, False) for r in raw]) if len(b) else np.zeros((0, NUM_LANDMARKS, 2))
        flipped = None
        if flip:
            flipped = np.stack([self._one(pixels, r, True) for r in raw]) if len(b) else np.zeros((0, NUM_LANDMARKS, 2))
        return TeacherOutput(points, flipped, b)


def is_dlib_teacher(spec: str) -> bool:
    """``dlib`` or a path to a dlib ``.dat`` shape predictor."""
    return spec == DLIB_NAME or spec.lower().endswith(".dat")


def load_teacher(spec: str, device: str = "cpu", trust: bool = False) -> Teacher:
    """A teacher from ``dlib``, a dlib ``.dat`` path, a FAN checkpoint path or a trained zoo name (one-line errors).

    Architecture names without weights (``fan2``) are refused: an untrained teacher would label every face with noise.
    """
    if is_dlib_teacher(spec):
        return DlibTeacher(None if spec == DLIB_NAME else spec, name=spec)
    from ..models import create_model
    from ..models.factory import trained_weights_file

    try:
        trained_weights_file(spec)
    except ConfigError:
        raise ConfigError(f"unknown teacher {spec!r}: not 'dlib', a checkpoint file, or a trained zoo name "
                          "(fan-edge models lists them)") from None
    if device != "cpu":
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"--device {device}: no CUDA device present (torch sees none)")
    return FanTeacher(spec, create_model(spec, trust=trust), device=device)
