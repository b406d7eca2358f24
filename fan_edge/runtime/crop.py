"""FAN's crop: the one geometry shared by training, calibration, evaluation and apps.

Coordinates everywhere in fan-edge are 0-based pixel centres: pixel ``(i, j)``
of an image has its centre at ``x = j, y = i`` (``.pts`` files are 1-based and
are converted on reading). The crop is a similarity transform from image
coordinates to crop coordinates, held as a 2x3 matrix, so that augmentation
can compose its own transform with it and decoding can invert it exactly.

FAN's recipe from a face box ``(x1, y1, x2, y2)``: the centre is the box centre
moved up by ``center_shift`` times the box height, the crop window is a square
of side ``window * (w + h) / reference_scale`` image pixels around it, resized
to the network input. FAN uses 0.12, 200 and 195 for boxes of its detector.
The window's outer edges (not its pixel centres) map onto the crop's outer
edges, which is FAN's convention once its 1-based arithmetic is unwound.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import BoxError

# A box side under this many pixels is a point (boxes in 0..1 units end up here); its crop would scale by up to 1e308.
MIN_BOX_SIDE = 0.5
# With the image's size known, a box side may be at most this many times the image's larger side: far beyond any
# face (a face filling the photo is 1x), and it keeps every coordinate the crop and the drawing compute within
# OpenCV's 32-bit integers (a 5e9 box overflowed them) and the crop matrix invertible (a 1e308 box did not).
MAX_BOX_SCALE = 100.0
# Without the image: coordinates beyond this are refused, so that sums and products of them stay finite.
MAX_BOX_COORD = 1e15


@dataclass(frozen=True)
class CropSpec:
    """How a face box becomes a square crop; travels in configs and artifact metadata."""

    reference_scale: float = 195.0
    center_shift: float = 0.12
    window: float = 200.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __post_init__(self) -> None:
        for name in ("reference_scale", "center_shift", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
                raise ValueError(f"crop {name} must be a finite number, got {value!r}")
        if self.reference_scale <= 0 or self.window <= 0:
            raise ValueError("crop reference_scale and window must be positive")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CropSpec":
        """Build from metadata written by another tool: unknown keys and non-numbers are errors."""
        if not isinstance(data, dict):
            raise ValueError(f"crop spec must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"reference_scale", "center_shift", "window"})
        if unknown:
            raise ValueError(f"unknown crop keys: {', '.join(map(str, unknown))}")
        values = {}
        for k, v in data.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"crop {k} must be a number, got {v!r}")
            values[k] = float(v)
        return cls(**values)


def _as_boxes(boxes: object) -> np.ndarray:
    """(N, 4) float64 from any array-like of real numbers; BoxError for strings, booleans, complex, ragged or too large."""
    what = type(boxes).__name__
    try:
        # Lists are looked at value by value (numpy would turn JSON's true into 1 and "5" into 5.0); arrays by dtype.
        raw = boxes if isinstance(boxes, np.ndarray) else np.asarray(boxes, dtype=object)
    except (TypeError, ValueError, OverflowError):  # objects numpy cannot hold
        raise BoxError(f"boxes must be numbers, (N, 4) x1, y1, x2, y2; got {what}") from None
    if raw.dtype.kind == "O":
        flat = raw.ravel()
        if not all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in flat):
            raise BoxError(f"boxes must be numbers, (N, 4) x1, y1, x2, y2; got {what}")
        try:
            b = np.array([float(v) for v in flat], dtype=np.float64).reshape(raw.shape)
        except OverflowError:  # an integer beyond float64 (JSON has no limit on digits)
            raise BoxError("box coordinates must be finite numbers; one is an integer too large for a float") from None
    elif raw.dtype.kind in "iuf":
        with np.errstate(over="ignore"):  # float128 / huge values become inf, refused below as not finite
            b = raw.astype(np.float64)
    else:
        raise BoxError(f"boxes must be numbers, (N, 4) x1, y1, x2, y2; got {what} of {raw.dtype}")
    if b.size and (b.ndim == 0 or b.ndim > 2 or b.shape[-1] != 4):
        raise BoxError(f"boxes must be (N, 4) x1, y1, x2, y2, got shape {b.shape}")
    return b.reshape(-1, 4)


def check_boxes(boxes: object, width: int | None = None, height: int | None = None) -> np.ndarray:
    """(N, 4) float64 boxes x1, y1, x2, y2, or a one-line :class:`~fan_edge.errors.BoxError` naming the first bad one.

    The one validation of user boxes: sessions, teachers, ``detect_and_predict``,
    ``fan-edge predict``, datasets and the crop functions all call it, so no box
    reaches the crop arithmetic where it would fail untyped (a 1e308 box gave a
    singular crop matrix, 5e9 overflowed OpenCV's drawing, a huge JSON integer an
    OverflowError). A box must be finite with x2 > x1 and y2 > y1, each side at
    least :data:`MIN_BOX_SIDE` pixels. With the image's ``width`` and ``height``
    it must also overlap the image (pixel centres 0..W-1, so the image spans
    -0.5..W-0.5; a box partly outside is fine, the crop pads with zeros) and
    each side must be at most :data:`MAX_BOX_SCALE` times the image's larger
    side; without them, coordinates must lie within :data:`MAX_BOX_COORD`.
    """
    b = _as_boxes(boxes)
    bad = ~np.all(np.isfinite(b), axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise BoxError(f"box {i} is not finite: {b[i].tolist()}")
    degenerate = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if degenerate.any():
        i = int(np.argmax(degenerate))
        raise BoxError(f"box {i} {b[i].tolist()} is degenerate: x1, y1, x2, y2 needs x2 > x1 and y2 > y1")
    with np.errstate(over="ignore"):
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    tiny = (w < MIN_BOX_SIDE) | (h < MIN_BOX_SIDE)
    if tiny.any():
        i = int(np.argmax(tiny))
        raise BoxError(f"box {i} {b[i].tolist()} is smaller than {MIN_BOX_SIDE} pixel a side (boxes are in image pixels)")
    if width is None or height is None:
        far = np.abs(b).max(axis=1) > MAX_BOX_COORD
        if far.any():
            i = int(np.argmax(far))
            raise BoxError(f"box {i} {b[i].tolist()} has a coordinate beyond {MAX_BOX_COORD:g} pixels")
        return b
    limit = MAX_BOX_SCALE * max(int(width), int(height))
    huge = (w > limit) | (h > limit)
    if huge.any():
        i = int(np.argmax(huge))
        raise BoxError(f"box {i} {b[i].tolist()} is more than {MAX_BOX_SCALE:g} times the {width}x{height} image a side")
    outside = (b[:, 2] <= -0.5) | (b[:, 3] <= -0.5) | (b[:, 0] >= width - 0.5) | (b[:, 1] >= height - 0.5)
    if outside.any():
        i = int(np.argmax(outside))
        raise BoxError(f"box {i} {b[i].tolist()} lies outside the {width}x{height} image")
    return b


def box_center_and_side(box: np.ndarray, spec: CropSpec) -> tuple[np.ndarray, float]:
    """Centre (x, y) and side, in image pixels, of the crop window for one box."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    center = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0 - spec.center_shift * h])
    side = spec.window * (w + h) / spec.reference_scale
    return center, side


def crop_matrix(box: np.ndarray, input_size: int, spec: CropSpec) -> np.ndarray:
    """2x3 affine taking image coordinates to crop coordinates for one face box (checked by :func:`check_boxes`)."""
    boxes = check_boxes(box)
    if len(boxes) != 1:
        raise BoxError(f"expected one box x1, y1, x2, y2, got {len(boxes)}")
    return _crop_matrix(boxes[0], input_size, spec)


def _crop_matrix(box: np.ndarray, input_size: int, spec: CropSpec) -> np.ndarray:
    center, side = box_center_and_side(box, spec)
    s = input_size / side
    # u = (x - cx + side/2) * N/side - 0.5 : window edges onto crop edges.
    return np.array(
        [
            [s, 0.0, (side / 2.0 - center[0]) * s - 0.5],
            [0.0, s, (side / 2.0 - center[1]) * s - 0.5],
        ]
    )


def resize_matrix(size: int, new_size: int) -> np.ndarray:
    """2x3 affine from a crop at ``size`` to the same window at ``new_size``.

    Pixel centres are kept, as :func:`crop_matrix` keeps them, so
    ``crop_matrix(box, new_size) == compose_affine(resize_matrix(size, new_size), crop_matrix(box, size))``:
    an augmented view can be cut again at another resolution.
    """
    r = new_size / size
    return np.array([[r, 0.0, (r - 1) / 2], [0.0, r, (r - 1) / 2]])


def crop_matrices(boxes: np.ndarray, input_size: int, spec: CropSpec) -> np.ndarray:
    """(N, 2, 3) crop matrices for (N, 4) boxes (checked by :func:`check_boxes`)."""
    boxes = check_boxes(boxes)
    return np.stack([_crop_matrix(b, input_size, spec) for b in boxes]) if len(boxes) else np.zeros((0, 2, 3))


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine (or a stack of them)."""
    m = np.asarray(matrix, dtype=np.float64)
    full = np.zeros(m.shape[:-2] + (3, 3))
    full[..., :2, :] = m
    full[..., 2, 2] = 1.0
    return np.linalg.inv(full)[..., :2, :]


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 affine that applies ``inner`` first, then ``outer``."""
    a = np.vstack([outer, [0.0, 0.0, 1.0]])
    b = np.vstack([inner, [0.0, 0.0, 1.0]])
    return (a @ b)[:2]


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (..., K, 2) points through a 2x3 matrix (or a matching stack of them)."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return np.einsum("...ij,...kj->...ki", m[..., :, :2], p) + m[..., None, :, 2]


def _halve(image: np.ndarray) -> np.ndarray:
    """2x2 box average: pixel k of the result covers pixels 2k and 2k+1."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    img = image[:h, :w]
    return 0.25 * (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2])


# Source bytes (as float32) converted at a time by the halving path: bounds a warp's memory whatever the photo's size.
TILE_BYTES = 8 << 20


def _halvings(spacing: float, height: int, width: int) -> int:
    """How many times the region is halved: until the crop's pixel spacing is under 2 or a side would drop below 1."""
    n = 0
    while spacing >= 2.0 and min(height, width) >= 2:
        height, width, spacing, n = height // 2, width // 2, spacing / 2.0, n + 1
    return n


def _box_reduce(region: np.ndarray, halvings: int) -> np.ndarray:
    """``halvings`` successive :func:`_halve` of ``region`` as float32, converted tile by tile.

    Converting the whole window to float first would cost 12 bytes a pixel
    (4.8 GB for a 20000 x 20000 RGB photo); each output pixel of n halvings
    depends only on its own 2**n x 2**n source block, so tiles aligned on
    those blocks give bit-identical values for a few megabytes.
    """
    if halvings == 0:
        return region.astype(np.float32)
    block = 2**halvings
    h, w, c = region.shape[0] // block, region.shape[1] // block, region.shape[2]
    out = np.empty((h, w, c), dtype=np.float32)
    per_block = block * block * c * 4
    cols = max(1, min(w, TILE_BYTES // per_block))
    rows = max(1, min(h, TILE_BYTES // (per_block * cols)))
    for r in range(0, h, rows):
        for q in range(0, w, cols):
            r1, q1 = min(r + rows, h), min(q + cols, w)
            tile = region[r * block : r1 * block, q * block : q1 * block].astype(np.float32)
            for _ in range(halvings):
                tile = _halve(tile)
            out[r:r1, q:q1] = tile
    return out


def warp_image(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Resample ``image`` (H, W, C) through ``matrix`` into a (size, size, C) float32 crop.

    Bilinear with a zero border. When the window is more than twice the crop
    (a large face or a big photo), the region is first box-averaged by halves
    so that the crop does not alias; only the window's region is touched, so
    the cost does not grow with the photo's size.
    """
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {image.shape}")
    channels = image.shape[2]
    inv = invert_affine(matrix)
    corners = apply_affine(inv, np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]]))
    spacing = float(np.hypot(inv[0, 0], inv[1, 0]))
    # Bilinear sampling after n halvings reads one halved pixel (2**n source pixels) beyond the
    # window, and halving drops up to 2**n - 1 pixels at the far edge: pad for both.
    factor = 2 ** int(np.floor(np.log2(spacing))) if np.isfinite(spacing) and spacing >= 2.0 else 1
    pad = 2 * factor + 1
    x0 = max(int(np.floor(corners[:, 0].min())) - pad, 0)
    y0 = max(int(np.floor(corners[:, 1].min())) - pad, 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + pad + 1, image.shape[1])
    y1 = min(int(np.ceil(corners[:, 1].max())) + pad + 1, image.shape[0])
    out = np.zeros((size, size, channels), dtype=np.float32)
    if x1 - x0 < 1 or y1 - y0 < 1 or not np.all(np.isfinite(inv)):
        return out
    # crop pixel -> region pixel
    to_region = inv.copy()
    to_region[:, 2] -= (x0, y0)
    halvings = _halvings(spacing, y1 - y0, x1 - x0)
    region = _box_reduce(image[y0:y1, x0:x1], halvings)
    for _ in range(halvings):
        to_region = to_region / 2.0
        to_region[:, 2] -= 0.25
    grid = np.arange(size, dtype=np.float64)
    xs = to_region[0, 0] * grid[None, :] + to_region[0, 1] * grid[:, None] + to_region[0, 2]
    ys = to_region[1, 0] * grid[None, :] + to_region[1, 1] * grid[:, None] + to_region[1, 2]
    h, w = region.shape[:2]
    xf, yf = np.floor(xs), np.floor(ys)
    ax = (xs - xf).astype(np.float32)[..., None]
    ay = (ys - yf).astype(np.float32)[..., None]
    xi, yi = xf.astype(np.int64), yf.astype(np.int64)
    padded = np.zeros((h + 2, w + 2, channels), dtype=np.float32)
    padded[1:-1, 1:-1] = region
    # Indices into the zero-padded region; anything beyond one pixel outside reads the border.
    xa = np.clip(xi + 1, 0, w + 1)
    xb = np.clip(xi + 2, 0, w + 1)
    ya = np.clip(yi + 1, 0, h + 1)
    yb = np.clip(yi + 2, 0, h + 1)
    top = padded[ya, xa] * (1 - ax) + padded[ya, xb] * ax
    bottom = padded[yb, xa] * (1 - ax) + padded[yb, xb] * ax
    out[:] = top * (1 - ay) + bottom * ay
    # float32 blending can overshoot the source range by an ulp; keep the documented range exact.
    lo, hi = float(region.min()), float(region.max())
    np.clip(out, min(lo, 0.0), max(hi, 0.0), out=out)
    return out
