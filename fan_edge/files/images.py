"""Reading images from disk into the runtime's RGB layout, the way photo viewers show them.

Every failure is a one-line :class:`~fan_edge.errors.DataError` naming the
file: missing, empty, not an image, an unsupported depth, or too large. The
size is read from the file's header (:mod:`fan_edge.files.headers`, every
format OpenCV decodes) and checked before anything is decoded: a small file
that declares a huge image is refused for the cost of reading a few hundred
bytes, where decoding it first cost gigabytes (README.md, Reliability: image
bombs). A file whose header cannot be read is refused, never decoded to find
out. What the codecs print while decoding a damaged file (libpng, libjpeg,
libtiff write to the terminal themselves) becomes part of that one line, or
one logged warning when the file still decodes.

The EXIF orientation (JPEG, PNG, WebP, TIFF) is applied, as every viewer
applies it: a phone photo stored sideways comes out upright, and boxes and
points are in that displayed frame (docs/runtime.md).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
import os
import re
import struct
import sys
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DataError
from ..runtime.image import as_rgb, check_image
from .headers import ImageHeader, exif_block, read_header

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_PIXELS = 200_000_000  # a 200 MP phone photo (16320 x 12240) still reads
MAX_DECODED_BYTES = 1 << 30  # the decoded array (and a decoder's working buffers), from the header
# OpenCV's log prefix, "[ERROR:0@0.05] global grfmt_tiff.cpp:117 TIFF_Error ", dropped from decoder messages.
_CV_LOG_PREFIX = re.compile(r"^\[\s*[A-Z]+:\d+@[\d.]+\]\s+(global\s+)?\S+:\d+\s+\S+\s+")
_DECODE_LOCK = threading.Lock()
DECODER_ENV = "FAN_EDGE_IMAGE_DECODER"
log = logging.getLogger(__name__)


def _decoder_lines(text: str) -> list[str]:
    """The decoder's messages, one per line, without OpenCV's log prefix, each cut to a readable length."""
    lines = (_CV_LOG_PREFIX.sub("", ln).strip() for ln in text.splitlines())
    return [ln[:200] for ln in dict.fromkeys(ln for ln in lines if ln)]


def _codec_chatter(decode: Callable[[], np.ndarray | None]) -> tuple[np.ndarray | None, list[str]]:
    """``decode()`` with what its codecs print kept off the terminal and returned instead.

    libpng, libjpeg and libtiff write straight to file descriptor 2 ("libpng
    error: IDAT: CRC error"), around OpenCV's own log lines: left alone they
    would add lines of their own to a one-line error. The descriptor points
    at a temporary file for the call; a lock keeps two threads from swapping
    it at once (decoding threads take turns; data loaders use processes).
    A decoder's exception becomes the last line of the chatter and a None image.
    """
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
                image = decode()
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - a damaged file can raise anything inside a codec; it is refused
                image = None
                sink.write(f"{exc or type(exc).__name__}".encode() + b"\n")
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
        sink.seek(0)
        return image, _decoder_lines(sink.read().decode("utf-8", errors="replace"))


@functools.lru_cache(maxsize=1)
def _opencv_installed() -> bool:
    return importlib.util.find_spec("cv2") is not None


def image_decoder() -> str:
    """``"opencv"`` or ``"pillow"``: the decoder :func:`read_image` uses in this process.

    OpenCV where it is installed (the toolkit: training, export, the test
    suite), Pillow in the runtime-only install, whose base is numpy and Pillow
    (OpenCV would be its largest part; sizes: docs/runtime.md). Both decode JPEG through
    libjpeg-turbo with the same settings, so the pixels, and the landmarks,
    are the same (docs/runtime.md). ``FAN_EDGE_IMAGE_DECODER`` picks one.
    """
    choice = os.environ.get(DECODER_ENV, "").strip().lower()
    if choice not in ("", "opencv", "pillow"):
        raise DataError(f"{DECODER_ENV}={choice!r}: expected opencv or pillow")
    if choice == "opencv" and not _opencv_installed():
        raise DataError(f"{DECODER_ENV}=opencv, but OpenCV is not installed: pip install opencv-python-headless")
    return choice or ("opencv" if _opencv_installed() else "pillow")


def _opencv_decode(data: np.ndarray) -> np.ndarray | None:
    """OpenCV's pixels at the file's depth, RGB(A) order (its BGR(A) swapped in place: no second copy)."""
    import cv2

    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ValueError(str(exc)) from None
    if image is not None and image.ndim == 3 and image.shape[2] in (3, 4):
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA, dst=image)
    return image


# The formats the Pillow path decodes (header name -> Pillow's plugin), each only by its own plugin: a file the header
# reader took for one format is never handed to another decoder. The rest need OpenCV.
PILLOW_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "BMP": "BMP", "WebP": "WEBP", "TIFF": "TIFF", "GIF": "GIF", "PNM": "PPM"}
_PILLOW_SAMPLE_BYTES = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def _pillow_array(im: Any) -> np.ndarray:
    """A decoded Pillow image as the array OpenCV's unchanged read gives: grey, RGB or RGBA, at the file's depth."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.array(im).astype(np.uint16, copy=False)
    if mode in ("L", "RGB", "RGBA", "I", "F"):
        return np.array(im)
    if mode == "1":
        return np.array(im.convert("L"))
    if mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in im.info):
        return np.array(im.convert("RGBA"))
    return np.array(im.convert("RGB"))  # palette, CMYK, YCbCr, LAB, HSV, RGBX


def _pillow_decode(data: bytes, header: ImageHeader, path: Path) -> np.ndarray | None:
    """Pillow's pixels, sized from Pillow's own reading of the header before a pixel is decoded.

    The size Pillow will allocate is checked against :data:`MAX_PIXELS` and
    :data:`MAX_DECODED_BYTES` here as well as from fan-edge's header reader,
    so a disagreement between the two readers cannot let a bomb through.
    Pillow's own bomb limit (a process-wide setting, 179 MP by default) is
    lifted for the call, under the decode lock, and restored.
    """
    from PIL import Image

    plugin = PILLOW_FORMATS.get(header.format)
    if plugin is None:
        raise DataError(f"{path}: {header.format} images need OpenCV, which this install lacks: "
                        "pip install opencv-python-headless (or convert the image to JPEG or PNG)")
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(data), formats=[plugin]) as im:
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise DataError(f"{path}: {width}x{height} is larger than {MAX_PIXELS:,} pixels")
            nbytes = width * height * len(im.getbands()) * _PILLOW_SAMPLE_BYTES.get(im.mode, 1)
            if nbytes > MAX_DECODED_BYTES:
                raise DataError(f"{path}: {width}x{height} {header.format} would decode to {nbytes / 2**30:.1f} GiB, "
                                f"more than {MAX_DECODED_BYTES / 2**30:.0f} GiB")
            im.load()
            return _pillow_array(im)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_size(path: str | os.PathLike[str], header: ImageHeader) -> None:
    """A DataError when the header declares more than :data:`MAX_PIXELS` or :data:`MAX_DECODED_BYTES`.

    Checked before decoding: the decoder would allocate all of it first.
    """
    if header.pixels > MAX_PIXELS:
        raise DataError(f"{path}: {header.width}x{header.height} is larger than {MAX_PIXELS:,} pixels")
    if header.decoded_bytes > MAX_DECODED_BYTES:
        raise DataError(
            f"{path}: {header.width}x{header.height} {header.format} would decode to {header.decoded_bytes / 2**30:.1f} GiB "
            f"({header.channels} channel(s) of {header.sample_bytes} byte(s)), more than {MAX_DECODED_BYTES / 2**30:.0f} GiB"
        )


def image_header(path: str | os.PathLike[str]) -> ImageHeader:
    """The file's header, size-checked: what :func:`read_image` would decode, or the DataError it would raise first."""
    p = Path(path)
    size = p.stat().st_size if p.is_file() else 0
    if size > MAX_DECODED_BYTES:  # decoding reads the whole file into memory first
        raise DataError(f"{p}: {size / 2**30:.1f} GiB on disk, more than the {MAX_DECODED_BYTES / 2**30:.0f} GiB fan-edge reads")
    header = read_header(p)
    check_size(p, header)
    return header


def image_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(width, height) as stored, from the header of any format fan-edge reads, without decoding; None if unreadable."""
    try:
        header = read_header(path)
    except DataError:
        return None
    return header.width, header.height


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels as displayed under EXIF ``orientation`` (1..8), C-contiguous; 1 or unknown: ``image`` itself.

    2 mirrors, 3 turns by 180 degrees, 4 flips; 5 transposes, 6 turns
    clockwise by 90, 7 transverses, 8 turns counter-clockwise by 90.
    """
    views = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: a.swapaxes(0, 1)[:, ::-1],
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: a.swapaxes(0, 1)[::-1],
    }
    if orientation not in views:
        return image
    return np.ascontiguousarray(views[orientation](image))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _probe(fmt: str) -> bytes | None:
    """A 3 x 2 grey image in ``fmt`` tagged with orientation 6 (a quarter turn), or None for formats without EXIF."""
    from PIL import Image

    pixels = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    exif = exif_block(6)
    if fmt == "TIFF":
        entries = [(256, 3, 3), (257, 3, 2), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (274, 3, 6), (277, 3, 1),
                   (278, 3, 2), (279, 4, 6)]
        ifd = struct.pack("<H", len(entries)) + b"".join(
            struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
            for tag, kind, value in entries) + b"\0\0\0\0"
        return b"II*\x00" + struct.pack("<I", 14) + pixels.tobytes() + ifd
    if fmt == "PNG":
        raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
        return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 8, 0, 0, 0, 0))
                + _png_chunk(b"eXIf", exif) + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    if fmt == "JPEG":
        jpeg = _pillow_encode(Image.fromarray(pixels), "JPEG")
        return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 8) + b"Exif\x00\x00" + exif + jpeg[2:]
    if fmt == "WebP":
        simple = _pillow_encode(Image.fromarray(np.dstack([pixels] * 3)), "WEBP", lossless=True)
        vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x08, 0, 0, 0]) + (2).to_bytes(3, "little") + (1).to_bytes(3, "little")
        body = b"WEBP" + vp8x + simple[12:] + b"EXIF" + struct.pack("<I", len(exif)) + exif + b"\0" * (len(exif) & 1)
        return b"RIFF" + struct.pack("<I", len(body)) + body
    return None


def _pillow_encode(image: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@functools.lru_cache(maxsize=None)
def decoder_orients(fmt: str, decoder: str = "opencv") -> bool:
    """Whether ``decoder`` ("opencv" or "pillow") applies the EXIF orientation of ``fmt`` files itself.

    Both leave JPEG, PNG and WebP as stored, but both TIFF decoders turn the
    pixels (OpenCV's in unchanged-mode reads, varying across versions;
    Pillow's since it reads TIFF through libtiff): a 3 x 2 probe tagged with a
    quarter turn answers it once per process, so that the orientation is
    applied exactly once.
    """
    data = _probe(fmt)
    if data is None:
        return False
    if decoder == "opencv":
        decoded, _ = _codec_chatter(lambda: _opencv_decode(np.frombuffer(data, np.uint8)))
    else:
        decoded, _ = _codec_chatter(lambda: _pillow_decode(data, ImageHeader(fmt, 3, 2, 1), Path(f"probe.{fmt}")))
    return decoded is not None and decoded.shape[:2] == (3, 2)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """The decoded pixels as displayed: (H, W) grey or (H, W, 3) RGB / (H, W, 4) RGBA, uint8, uint16 or float32.

    What the runtime takes as it is (:class:`~fan_edge.runtime.session.LandmarkSession`
    converts only each face's window), so a large photo is never copied to float whole.
    The EXIF orientation is applied (a copy, only for photos that carry one).
    """
    p = Path(path)
    header = image_header(p)
    decoder = image_decoder()
    if decoder == "opencv":
        image, chatter = _codec_chatter(lambda: _opencv_decode(np.fromfile(p, dtype=np.uint8)))
    else:
        image, chatter = _codec_chatter(lambda: _pillow_decode(p.read_bytes(), header, p))
    if image is None:
        raise DataError(f"{p}: not a readable image" + (f" ({chatter[0]})" if chatter else ""))
    if chatter:  # decoded, but damaged (a corrupt JPEG segment, a short TIFF strip): say so once, in one line
        more = f" (and {len(chatter) - 1} more)" if len(chatter) > 1 else ""
        log.warning("%s: decoded with errors: %s%s", p, chatter[0], more)
    if image.shape[0] * image.shape[1] > MAX_PIXELS:  # the header said less: a decoder that reads it otherwise
        raise DataError(f"{p}: {image.shape[1]}x{image.shape[0]} is larger than {MAX_PIXELS:,} pixels")
    try:
        check_image(image)
    except ValueError as exc:
        raise DataError(f"{p}: {exc}") from None
    if header.orientation != 1 and not decoder_orients(header.format, decoder):
        image = apply_orientation(image, header.orientation)
    return image


def check_image_file(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) as displayed, or the DataError that reading the file would raise first, from its header alone.

    For folders checked before a long job (training, calibration): a
    missing, empty, unrecognised, unreadable or oversized file is settled
    without decoding; only damage inside the pixels waits for decoding.
    """
    return image_header(path).display_size


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W, 3) float32 RGB in 0..255 from an image file (any depth, grey or alpha), as displayed."""
    image = read_image(path)
    try:
        return as_rgb(image)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
