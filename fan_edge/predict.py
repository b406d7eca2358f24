"""``fan-edge predict``: landmarks on a photo, end to end (detector, FAN, drawing).

The model is an exported artifact (``.onnx``, ``.xml``, ``.tflite``), run by
the torch-free runtime; or a registry name or checkpoint, which is exported
once to fp32 ONNX (OpenVINO IR for ``--backend openvino``, TFLite for
``--backend litert``) into the cache (:func:`fan_edge.runtime.cache.cache_dir`,
``artifacts/``) by the same code as ``fan-export``, keyed by the weights'
SHA-256 and the fan-edge version, and run from there: PyTorch is needed for
that first export only. The cached artifact is not parity-checked (that
needs faces and time); ``fan-export --verify`` makes checked ones.

Faces come from ``boxes`` when given, else from dlib's HOG detector
(:mod:`fan_edge.runtime.detect`), whose detections scoring under
``min_score`` (:data:`~fan_edge.runtime.detect.MIN_SCORE` by default) are
left out and whose boxes are refined by one pass of re-boxing from the
predicted landmarks.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import atomic_path, check_writable
from .errors import ConfigError, DataError, OutputError
from .runtime.cache import cache_dir, cache_hint
from .runtime.crop import check_boxes
from .runtime.detect import MIN_SCORE, SCAN_SIZE, DlibHogDetector, Faces, check_min_score, detect_and_predict
from .runtime.image import to_uint8
from .runtime.session import LandmarkSession

ARTIFACT_SUFFIXES = (".onnx", ".xml", ".tflite")
# The format a registry name or checkpoint is exported to, by the backend asked for.
CACHE_TARGETS = {"auto": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "litert": "tflite"}
_SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}
MAX_BOXES_JSON = 1 << 20  # bytes: a boxes file is a few lines


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_artifact(model: str, backend: str = "auto", trust: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """An artifact the runtime can load for ``model``: the file itself, or a cached export of a name or checkpoint."""
    path = Path(model)
    if path.suffix.lower() in ARTIFACT_SUFFIXES:
        return path  # the session reports a missing or unreadable file
    if backend not in CACHE_TARGETS:
        raise ConfigError(f"unknown backend {backend!r}; expected one of: {', '.join(CACHE_TARGETS)}")
    from .export import export_model
    from .models.factory import trained_weights_file

    weights = trained_weights_file(model)
    if weights == path:
        if not path.is_file():
            raise ConfigError(f"{model}: no such checkpoint or artifact")
        stem = re.sub(r"(\.pth)?\.(tar|pth|pt|safetensors|zip|bin)$", "", path.name)
    else:
        stem = weights.stem
    target = CACHE_TARGETS[backend]
    key = hashlib.sha256(f"{_sha256(weights)} {__version__} {target}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "model"
    out = cache_dir("artifacts") / f"{stem}-{key}-fp32{_SUFFIX[target]}"
    if out.is_file() and out.with_name(out.name + ".json").is_file():
        return out
    try:  # refused before the "exporting" line: an unwritable cache is one line, not two
        check_writable(out, "the fan-edge cache")
    except OutputError as exc:
        raise OutputError(f"{exc} ({cache_hint()})") from None
    if log is not None:
        log(f"exporting {model} to {out} (once; later runs reuse it)")
    export_model(model if weights is not path else str(path), target, "fp32", output=out, verify=False, trust=trust)
    return out


def parse_boxes(text: str) -> np.ndarray:
    """Boxes from ``"x1,y1,x2,y2;x1,y1,x2,y2"`` or a JSON file (a list of [x1, y1, x2, y2], or {"boxes": [...]})."""
    path = Path(text)
    if text.lower().endswith(".json") or path.is_file():
        if not path.is_file():
            raise DataError(f"{text}: no such boxes file")
        if path.stat().st_size > MAX_BOXES_JSON:
            raise DataError(f"{text}: larger than {MAX_BOXES_JSON} bytes, not a boxes file")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nesting deeper than json's stack
            raise DataError(f"{text}: not JSON ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})") from None
        if isinstance(data, dict):
            data = data.get("boxes")
        rows = data if isinstance(data, list) else None
        if rows is None or not all(isinstance(r, list) and len(r) == 4 for r in rows):
            raise DataError(f"{text}: expected a list of [x1, y1, x2, y2] boxes (or {{\"boxes\": [...]}})")
        values = rows
    else:
        values = []
        for part in filter(None, (p.strip() for p in text.split(";"))):
            fields = [f.strip() for f in part.split(",")]
            if len(fields) != 4:
                raise DataError(f"box {part!r}: expected x1,y1,x2,y2")
            try:
                values.append([float(f) for f in fields])
            except ValueError:
                raise DataError(f"boxes must be numbers: {text[:80]!r}") from None
        if not values:
            raise DataError("--boxes is empty; expected x1,y1,x2,y2[;x1,y1,x2,y2...] or a JSON file")
    # Finite, ordered, at least a pixel, no JSON booleans, strings or integers beyond float64: checked here, at the
    # flag; the image's own bounds once it is read (predict_photo).
    return check_boxes(values)


@dataclass(frozen=True)
class PhotoResult:
    """One photo's faces and how they were found."""

    image: Path
    artifact: Path
    backend: str
    device: str
    detected: bool
    faces: Faces
    min_score: float | None = None  # the detector score bound applied (None: boxes given)

    @property
    def below_min_score(self) -> list[float]:
        """Scores of the detections left out for scoring under :attr:`min_score`, best first."""
        below = self.faces.below_min_score
        return [] if below is None else [float(v) for v in below]

    def to_dict(self) -> dict:
        f = self.faces
        return {
            "image": str(self.image),
            "model": str(self.artifact),
            "backend": self.backend,
            "device": self.device,
            "boxes_from": "detector" if self.detected else "given",
            "min_score": self.min_score,
            "below_min_score": [round(v, 4) for v in self.below_min_score],
            "faces": [
                {
                    "box": [round(float(v), 2) for v in f.boxes[i]],
                    "detector_score": None if f.detector_scores is None else round(float(f.detector_scores[i]), 4),
                    "points": [[round(float(x), 2), round(float(y), 2)] for x, y in f.points[i]],
                    "scores": [round(float(s), 4) for s in f.scores[i]],
                }
                for i in range(len(f.boxes))
            ],
        }


def predict_photo(
    image_path: str | Path,
    model: str = "default",
    boxes: np.ndarray | None = None,
    *,
    backend: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    refine_passes: int | None = None,
    scan_size: int | None = None,
    min_score: float | None = MIN_SCORE,
    trust: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[PhotoResult, np.ndarray]:
    """The photo's landmarks and the decoded image (RGB(A) or grey at the file's depth, for :func:`draw_faces`).

    ``refine_passes`` defaults to 1 for detected faces (their boxes only
    approximate the landmark boxes the models are trained on) and 0 for
    given boxes (taken as the caller's exact boxes). ``min_score``: detected
    faces scoring under it are left out (None keeps every detection dlib
    reports, from 0); given boxes are always kept. The image stays at its
    own depth (the session converts each face's window only), so a large
    photo costs its decoded bytes, not a float copy four times their size.
    The photo is taken as displayed (its EXIF orientation applied): ``boxes``
    and the points returned are in that frame, the one a viewer shows.
    """
    from .files.images import read_image

    min_score = check_min_score(min_score) if boxes is None else None
    image = read_image(image_path)
    if boxes is not None:  # against the photo as displayed, before a slow first export of the model
        boxes = check_boxes(boxes, image.shape[1], image.shape[0])
    artifact = resolve_artifact(model, backend, trust=trust, log=log)
    with LandmarkSession(artifact, backend=backend, device=device, threads=threads) as session:
        # dlib reports from min(0, min_score): what scores under min_score is counted, not kept
        detector = (DlibHogDetector(scan_size=scan_size or SCAN_SIZE, threshold=min(0.0, min_score or 0.0))
                    if boxes is None else None)
        passes = refine_passes if refine_passes is not None else (1 if boxes is None else 0)
        faces = detect_and_predict(session, image, detector=detector, boxes=boxes, refine_passes=passes, min_score=min_score)
        result = PhotoResult(Path(image_path), artifact, session.backend.name, session.device, boxes is None, faces, min_score)
    return result, image


def draw_faces(image: np.ndarray, faces: Faces) -> np.ndarray:
    """An RGB uint8 copy of an image with each face's box and landmarks drawn (sizes follow the face).

    Any image the runtime takes (grey, RGBA, 16-bit, float; :mod:`fan_edge.runtime.image`)
    is drawn the way the model saw it. Pillow draws, as it decodes in the
    runtime-only install: drawing needs nothing beyond the base install.
    """
    from PIL import Image, ImageDraw

    pixels = to_uint8(image)
    rgb = np.dstack([pixels] * 3) if pixels.ndim == 2 else pixels[..., :3]
    canvas = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    pen = ImageDraw.Draw(canvas)
    for box, points in zip(faces.boxes, faces.points):
        side = max(float(box[2] - box[0]), float(box[3] - box[1]), 1.0)
        radius = max(1, round(side / 90))
        thick = max(1, round(side / 200))
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        pen.rectangle((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), outline=(0, 160, 255), width=thick)
        for x, y in points:
            if np.isfinite(x) and np.isfinite(y):
                cx, cy = int(round(x)), int(round(y))
                pen.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(0, 255, 0))
    return np.asarray(canvas)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def check_image_output(path: str | Path) -> Path:
    """``--out`` checked before the photo is decoded and the model run: an image suffix, and a path that can be
    written (not a folder, its parent a writable folder); a one-line error otherwise, with nothing written."""
    out = Path(path)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{out}: --out must end in .png (or .jpg, .bmp, .webp, .tif)")
    check_writable(out, "--out")
    return out


# Pillow's encoder for each --out suffix, with the options that keep the drawing sharp.
_ENCODERS = {".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 95}), ".jpeg": ("JPEG", {"quality": 95}),
             ".bmp": ("BMP", {}), ".webp": ("WEBP", {"lossless": True}), ".tif": ("TIFF", {}), ".tiff": ("TIFF", {})}


def write_image(path: str | Path, rgb: np.ndarray) -> Path:
    """Encode an RGB uint8 image by the file's suffix (.png, .jpg, ...) and write it atomically."""
    from PIL import Image

    out = check_image_output(path)
    fmt, options = _ENCODERS[out.suffix.lower()]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format=fmt, **options)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return out
