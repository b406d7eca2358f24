"""Bring any image array to the RGB float layout the crop expects.

Apps hand over whatever their camera or decoder gives: grayscale, RGB, RGBA,
8- or 16-bit, or floats. The runtime takes RGB channel order (convert BGR from
OpenCV with ``image[..., ::-1]``) and 0..255 values: uint8 as is, uint16
divided by 257 (65535 -> 255), floats as they are unless the finite values all
lie in [0, 1], which are taken as unit-range and multiplied by 255.

:func:`as_rgb` converts a whole image at once (what data loading wants).
:class:`ImageSource` is what a session uses instead: it validates the array
and keeps a view of it, so that only the pixels under each face's crop window
are ever converted; a 20000 x 20000 photo then costs its crops, not a 4.8 GB
float copy. Integer images go through it without any copy; float images are
converted whole (their range and NaNs must be known before any crop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UINT16_SCALE = 1.0 / 257.0  # 65535 / 257 = 255: full 16-bit range onto the 8-bit one


def check_image(image: object) -> np.ndarray:
    """The array as (H, W, C), C in 1, 3, 4, or a one-line ValueError: what every image entry point accepts."""
    if isinstance(image, (str, bytes)) or image is None:
        raise ValueError(f"expected an image array, got {type(image).__name__}")
    try:
        img = np.asarray(image)
    except Exception as exc:  # ragged lists and objects numpy cannot hold
        raise ValueError(f"expected an image array, got {type(image).__name__} ({type(exc).__name__})") from None
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"empty image of shape {img.shape}")
    if not (img.dtype in (np.uint8, np.uint16) or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"unsupported image dtype {img.dtype} (expected uint8, uint16 or float)")
    return img


def _float_to_255(img: np.ndarray) -> np.ndarray:
    out = img.astype(np.float32)
    finite = out[np.isfinite(out)]
    if finite.size and finite.max() <= 1.0:
        out = out * 255.0
    return np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 RGB in 0..255 from (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) arrays."""
    img = check_image(image)
    if img.dtype == np.uint8:
        out = img.astype(np.float32)
    elif img.dtype == np.uint16:
        out = img.astype(np.float32) / 257.0
    else:
        out = _float_to_255(img)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    elif out.shape[2] == 4:
        out = out[..., :3]
    return out


@dataclass(frozen=True)
class ImageSource:
    """A validated image kept as a view: (H, W, 1) grey or (H, W, 3) RGB pixels, and the factor to 0..255.

    Crops are warped from :attr:`pixels` (the warp converts only the window's
    region to float) and finished by :meth:`finish`. Alpha is dropped: FAN
    sees colour only.
    """

    pixels: np.ndarray  # (H, W, 1) or (H, W, 3); uint8, uint16 or float32 already in 0..255
    scale: float  # multiply warped values by this to reach 0..255

    @classmethod
    def from_array(cls, image: object) -> "ImageSource":
        img = check_image(image)
        if img.shape[2] == 4:
            img = img[..., :3]
        if img.dtype == np.uint8:
            return cls(img, 1.0)
        if img.dtype == np.uint16:
            return cls(img, UINT16_SCALE)
        return cls(_float_to_255(img), 1.0)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def finish(self, crops: np.ndarray) -> np.ndarray:
        """Warped (N, S, S, C) crops to (N, S, S, 3) float32 RGB in 0..255."""
        out = np.asarray(crops, dtype=np.float32)
        if self.scale != 1.0:
            out = out * np.float32(self.scale)
        if out.shape[-1] == 1:
            out = np.repeat(out, 3, axis=-1)
        return out


def to_uint8(image: object) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB uint8, C-contiguous: what classic detectors (dlib) take.

    uint8 RGB and grey arrays pass without a copy when already contiguous.
    """
    source = ImageSource.from_array(image)
    px = source.pixels
    if px.dtype != np.uint8:
        px = np.clip(np.rint(px.astype(np.float32) * np.float32(source.scale)), 0, 255).astype(np.uint8)
    if px.shape[2] == 1:
        px = px[..., 0]
    return np.ascontiguousarray(px)


def to_network_input(crops: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) 0..255 crops to FAN's input: (N, 3, S, S) float32 in [0, 1], no mean or std."""
    x = np.asarray(crops, dtype=np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    return np.ascontiguousarray(np.clip(x, 0.0, 1.0))
