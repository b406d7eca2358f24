"""Reading images from disk into the runtime's RGB layout.

Every failure is a one-line :class:`~fan_edge.errors.DataError` naming the
file: missing, empty, not an image, an unsupported depth, or too large. The
size limit is checked on the file's header before anything is decoded, so a
20000 x 20000 photo (1.2 GB as RGB, 4.8 GB as float) is refused for the cost
of reading a few bytes instead of being decoded first. What the codecs
print while decoding a damaged file (libpng, libjpeg, libtiff write to the
terminal themselves) becomes part of that one line, or one logged warning
when the file still decodes.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DataError
from ..runtime.image import as_rgb, check_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_PIXELS = 200_000_000
_JPEG_MAX_SEGMENTS = 10_000  # APPn, DQT, DHT... before the frame header; a real file has a few dozen
# OpenCV's log prefix, "[ERROR:0@0.05] global grfmt_tiff.cpp:117 TIFF_Error ", dropped from decoder messages.
_CV_LOG_PREFIX = re.compile(r"^\[\s*[A-Z]+:\d+@[\d.]+\]\s+(global\s+)?\S+:\d+\s+\S+\s+")
_DECODE_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    return None


def _bmp_size(head: bytes) -> tuple[int, int] | None:
    if head[:2] != b"BM" or len(head) < 26:
        return None
    if struct.unpack("<I", head[14:18])[0] == 12:  # BITMAPCOREHEADER: 16-bit sides
        return struct.unpack("<HH", head[18:22])
    w, h = struct.unpack("<ii", head[18:26])
    return abs(w), abs(h)


def _webp_size(head: bytes) -> tuple[int, int] | None:
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP" or len(head) < 30:
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    return None


def _jpeg_size(fh: BinaryIO) -> tuple[int, int] | None:
    """Walk the segments to the frame header (SOFn); EXIF and ICC segments before it can be large."""
    fh.seek(2)
    for _ in range(_JPEG_MAX_SEGMENTS):
        byte = fh.read(1)
        if byte != b"\xff":
            return None
        marker = fh.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fh.read(1)
        if not marker:
            return None
        m = marker[0]
        if m == 0x01 or 0xD0 <= m <= 0xD8:  # markers without a length
            continue
        length = fh.read(2)
        if m in (0xD9, 0xDA) or len(length) < 2:  # image data or the end before any frame header
            return None
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            frame = fh.read(5)
            if len(frame) < 5:
                return None
            _, h, w = struct.unpack(">BHH", frame)
            return (w, h) if h else None  # height 0: defined later by a DNL segment
        fh.seek(struct.unpack(">H", length)[0] - 2, os.SEEK_CUR)
    return None


def _tiff_size(fh: BinaryIO, head: bytes) -> tuple[int, int] | None:
    """Width and length tags of the first directory (the page OpenCV decodes)."""
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(head[:4])
    if order is None:
        return None
    fh.seek(struct.unpack(order + "I", head[4:8])[0])
    count = fh.read(2)
    if len(count) < 2:
        return None
    sides: dict[int, int] = {}
    for _ in range(min(struct.unpack(order + "H", count)[0], 4096)):
        entry = fh.read(12)
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257) and kind in (3, 4):
            sides[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
    return (sides[256], sides[257]) if len(sides) == 2 else None


def _decoder_lines(text: str) -> list[str]:
    """The decoder's messages, one per line, without OpenCV's log prefix, each cut to a readable length."""
    lines = (_CV_LOG_PREFIX.sub("", ln).strip() for ln in text.splitlines())
    return [ln[:200] for ln in dict.fromkeys(ln for ln in lines if ln)]


def _decode(data: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
    """``cv2.imdecode`` with what its codecs print kept off the terminal and returned instead.

    libpng, libjpeg and libtiff write straight to file descriptor 2 ("libpng
    error: IDAT: CRC error"), around OpenCV's own log lines: left alone they
    would add lines of their own to a one-line error. The descriptor points
    at a temporary file for the call; a lock keeps two threads from swapping
    it at once (decoding threads take turns; data loaders use processes).
    """
    import cv2

    with _DECODE_LOCK, tempfile.TemporaryFile() as sink:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no descriptor 2 (a daemon): nothing to keep off it
            saved = None
        try:
            if saved is not None:
                os.dup2(sink.fileno(), 2)
            try:
                image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
            except cv2.error as exc:
                image = None
                sink.write(str(exc).encode() + b"\n")
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
        sink.seek(0)
        return image, _decoder_lines(sink.read().decode("utf-8", errors="replace"))


def image_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, JPEG, BMP, WebP or TIFF file, without decoding; None if not recognised."""
    with open(path, "rb") as fh:
        head = fh.read(32)
        for sniff in (_png_size, _bmp_size, _webp_size):
            size = sniff(head)
            if size is not None:
                return size
        if head[:2] == b"\xff\xd8":
            return _jpeg_size(fh)
        return _tiff_size(fh, head)


def _check_pixels(p: Path, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise DataError(f"{p}: {width}x{height} is larger than {MAX_PIXELS:,} pixels")


def _header_size(p: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header; None when the header is not one we read (or is damaged: the decoder
    then says what is wrong). A missing or empty file is a DataError here, before any decoding."""
    if not p.is_file():
        raise DataError(f"{p}: no such image")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: empty file")
    try:
        return image_size(p)
    except (OSError, struct.error):
        return None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """The decoded pixels as stored: (H, W) grey or (H, W, 3) RGB / (H, W, 4) RGBA, uint8, uint16 or float32.

    What the runtime takes as it is (:class:`~fan_edge.runtime.session.LandmarkSession`
    converts only each face's window), so a large photo is never copied to float whole.
    """
    import cv2

    p = Path(path)
    size = _header_size(p)
    if size is not None:
        _check_pixels(p, *size)
    image, chatter = _decode(np.fromfile(p, dtype=np.uint8))
    if image is None:
        raise DataError(f"{p}: not a readable image" + (f" ({chatter[0]})" if chatter else ""))
    if chatter:  # decoded, but damaged (a corrupt JPEG segment, a short TIFF strip): say so once, in one line
        more = f" (and {len(chatter) - 1} more)" if len(chatter) > 1 else ""
        log.warning("%s: decoded with errors: %s%s", p, chatter[0], more)
    _check_pixels(p, image.shape[1], image.shape[0])
    try:
        check_image(image)
    except ValueError as exc:
        raise DataError(f"{p}: {exc}") from None
    if image.ndim == 3 and image.shape[2] in (3, 4):  # OpenCV's BGR(A) to RGB(A), in place: no second copy
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA, dst=image)
    return image


def check_image_file(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of an image file, or the DataError that reading it would raise, cheaply.

    For folders checked before a long job (training, calibration): the
    header alone settles a missing, empty, unrecognised or oversized file;
    only a file whose header is not recognised is decoded to be sure.
    """
    p = Path(path)
    size = _header_size(p)
    if size is None:
        image = read_image(p)
        return int(image.shape[1]), int(image.shape[0])
    if min(size) < 1:
        raise DataError(f"{p}: not a readable image ({size[0]}x{size[1]} in its header)")
    _check_pixels(p, *size)
    return size


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W, 3) float32 RGB in 0..255 from an image file (any depth, grey or alpha)."""
    image = read_image(path)
    try:
        return as_rgb(image)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
