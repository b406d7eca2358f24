"""Image file headers read before decoding: size, depth and EXIF orientation of every format fan-edge decodes.

Why: OpenCV allocates the whole image as soon as it has read a header, then
decodes into it; a check after decoding comes too late: a small GIF or
Radiance HDR file that declares a huge image cost gigabytes before it was
refused (README.md, Reliability: image bombs). So every format OpenCV can
decode is recognised here by the signature OpenCV itself uses to choose a
decoder, and its header is read with plain file reads (no codec): the size of
the array the decoder will produce. :mod:`fan_edge.files.images` refuses what is
too large for the cost of reading a few hundred bytes.

What is not recognised, or whose header does not parse, is refused rather than
decoded: an image whose size we cannot bound is never handed to a decoder.
Where the header admits more than one reading (duplicated TIFF tags, a GIF
frame larger than its screen) the larger one counts. Fields are read the way
the decoders read them (TIFF sizes of any integer type, JPEG segments after
stray bytes, Radiance lines as ``fgets`` cuts them), so a file cannot show us a
small size and the decoder a large one.

The EXIF orientation (JPEG APP1, PNG eXIf, WebP EXIF, the TIFF tag) is read at
the same time, so that photos are used the way every viewer shows them.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import DataError

FORMATS = ("JPEG", "PNG", "BMP", "WebP", "TIFF", "GIF", "PNM", "PAM", "PFM", "Sun raster", "Radiance HDR", "JPEG 2000", "AVIF")
_HEAD = 64
_MAX_SCAN = 1 << 16  # bytes of a text header (PNM, PAM, PFM, HDR) or of stray bytes between JPEG segments
_MAX_ITEMS = 1 << 16  # segments, chunks, boxes or blocks walked before giving up
_MAX_PNG_CHUNKS = 1 << 20  # every chunk is walked (an APNG frame anywhere bounds the size): 12 MB of empty chunks
_INT32_MAX = 2**31 - 1


class _Unreadable(Exception):
    """A header that does not parse: the image is refused without decoding."""


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says about the array its decoder will produce.

    ``channels`` and ``sample_bytes`` are upper bounds where the decoder's
    choice depends on more than the header (a palette may come out with alpha).
    ``work_pixels``: pixels of buffers the decoder holds besides the image (a
    TIFF tile, APNG canvases). ``orientation``: EXIF 1..8 (1: as stored).
    """

    format: str
    width: int
    height: int
    channels: int = 3
    sample_bytes: int = 1
    orientation: int = 1
    work_pixels: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """Bytes the decoded pixels take (image and working buffers): what a size limit must bound."""
        return (self.pixels + self.work_pixels) * self.channels * self.sample_bytes

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown: orientations 5 to 8 turn the photo by a quarter."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


class _Reader:
    """Bounds-checked reads from an open file."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.size = fh, size

    def at(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > self.size:
            raise _Unreadable("truncated header")
        self.fh.seek(offset)
        data = self.fh.read(n)
        if len(data) != n:
            raise _Unreadable("truncated header")
        return data

    def upto(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``offset`` (fewer at the end of the file)."""
        if offset >= self.size:
            return b""
        self.fh.seek(offset)
        return self.fh.read(min(n, self.size - offset))


# ---- EXIF -------------------------------------------------------------------------------------------------------

EXIF_ORIENTATION = 274


def exif_orientation(blob: bytes) -> int:
    """The Orientation tag (1..8) of a TIFF-structured EXIF block (``Exif\\0\\0`` prefix allowed); 1 if absent or broken.

    Broken or out-of-range values count as 1, as viewers treat them.
    """
    if blob.startswith(b"Exif\x00\x00"):
        blob = blob[6:]
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(blob[:4])
    if order is None or len(blob) < 8:
        return 1
    (ifd,) = struct.unpack(order + "I", blob[4:8])
    if ifd + 2 > len(blob):
        return 1
    (count,) = struct.unpack(order + "H", blob[ifd : ifd + 2])
    for i in range(min(count, (len(blob) - ifd - 2) // 12)):
        entry = blob[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        tag, kind, n = struct.unpack(order + "HHI", entry[:8])
        if tag == EXIF_ORIENTATION:
            if n != 1 or kind not in (3, 4):
                return 1
            value = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
            return value if 1 <= value <= 8 else 1
    return 1


def exif_block(orientation: int, little_endian: bool = True) -> bytes:
    """A minimal TIFF-structured EXIF block holding only ``orientation``: what tests and decoder probes embed."""
    o = "<" if little_endian else ">"
    return (b"II*\x00" if little_endian else b"MM\x00*") + struct.pack(o + "IHHHIHHI", 8, 1, EXIF_ORIENTATION, 3, 1, orientation, 0, 0)


# ---- formats, in the order OpenCV tries its decoders ------------------------------------------------------------


def _is_space(b: bytes) -> bool:
    return len(b) == 1 and b in b" \t\n\v\f\r"


def sniff_format(head: bytes) -> str | None:
    """The format OpenCV would decode a file starting with ``head`` as (see :data:`FORMATS`), or None."""
    if head[4:8] == b"ftyp":
        size = struct.unpack(">I", head[:4])[0]
        brands = head[8:12] + head[16 : min(max(size, 16), len(head))]
        return "AVIF" if any(brands[i : i + 4] in (b"avif", b"avis") for i in range(0, len(brands) - 3, 4)) else None
    if head[:2] == b"BM":
        return "BMP"
    if head.startswith((b"#?RGBE", b"#?RADIANCE")):
        return "Radiance HDR"
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:4] == b"\x59\xa6\x6a\x95":
        return "Sun raster"
    if head[:1] == b"P" and head[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6") and _is_space(head[2:3]):
        return "PNM"
    if head[:2] == b"P7" and _is_space(head[2:3]):
        return "PAM"
    if head[:2] in (b"PF", b"Pf") and _is_space(head[2:3]):
        return "PFM"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def _positive(width: int, height: int) -> tuple[int, int]:
    if not (0 < width <= _INT32_MAX and 0 < height <= _INT32_MAX):
        raise _Unreadable(f"{width}x{height} in its header" if max(abs(width), abs(height)) < 10**12 else "a side out of range")
    return width, height


def _next_marker(r: _Reader, pos: int) -> tuple[int, int]:
    """The next JPEG marker at or after ``pos`` and the offset after it: stray bytes and fill bytes are skipped as
    libjpeg skips them (it only warns), so a junk byte cannot hide a frame header from us and not from the decoder."""
    for limit in (64, _MAX_SCAN):
        window = r.upto(pos, limit)
        start = window.find(b"\xff")
        while 0 <= start < len(window) - 1 and window[start + 1] in (0x00, 0xFF):
            start = window.find(b"\xff", start + 2) if window[start + 1] == 0x00 else start + 1  # stuffed zero / fill
        if 0 <= start < len(window) - 1:
            return window[start + 1], pos + start + 2
        if len(window) < limit:
            break
    raise _Unreadable("no JPEG frame header")


def _jpeg(r: _Reader) -> ImageHeader:
    """Segments up to the frame header (SOFn); the first Exif APP1 on the way."""
    pos, orientation, exif_seen = 2, 1, False
    for _ in range(_MAX_ITEMS):
        marker, pos = _next_marker(r, pos)
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # a second SOI, the end, or image data before any frame header
            raise _Unreadable("no JPEG frame header")
        (length,) = struct.unpack(">H", r.at(pos, 2))
        if length < 2:
            raise _Unreadable("bad JPEG segment length")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            precision, height, width, components = struct.unpack(">BHHB", r.at(pos + 2, 6))
            width, height = _positive(width, height)  # height 0 (DNL) is refused by libjpeg too
            return ImageHeader("JPEG", width, height, max(1, min(components, 4)), 2 if precision > 8 else 1, orientation)
        if marker == 0xE1 and not exif_seen and length >= 8 and r.at(pos + 2, 6) == b"Exif\x00\x00":
            exif_seen = True
            orientation = exif_orientation(r.at(pos + 8, length - 8))
        pos += length
    raise _Unreadable("no JPEG frame header")


_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}


def _png(r: _Reader) -> ImageHeader:
    """IHDR, then every chunk's type (their data is skipped): eXIf, tRNS and APNG frame controls."""
    length, kind = struct.unpack(">I4s", r.at(8, 8))
    if kind != b"IHDR" or length < 13:
        raise _Unreadable("PNG without IHDR")
    width, height, depth, colour = struct.unpack(">IIBB", r.at(16, 10))
    width, height = _positive(width, height)
    if colour not in _PNG_CHANNELS:
        raise _Unreadable(f"PNG colour type {colour}")
    channels, orientation, exif_seen, animated, frame_w, frame_h = _PNG_CHANNELS[colour], 1, False, False, 0, 0
    pos = 8 + 12 + length
    for _ in range(_MAX_PNG_CHUNKS):
        head = r.upto(pos, 8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            break
        if kind == b"tRNS":
            channels = 4
        elif kind == b"acTL":
            animated = True
        elif kind == b"fcTL" and length >= 20:
            fw, fh, fx, fy = struct.unpack(">IIII", r.at(pos + 12, 16))
            frame_w, frame_h = max(frame_w, fw + fx), max(frame_h, fh + fy)
        elif kind == b"eXIf" and not exif_seen:
            exif_seen = True
            orientation = exif_orientation(r.upto(pos + 8, min(length, 1 << 20)))
        pos += 12 + length
    else:
        raise _Unreadable(f"more than {_MAX_PNG_CHUNKS} chunks")
    if frame_w > width or frame_h > height:  # a frame outside the canvas: count the larger
        width, height = max(width, frame_w), max(height, frame_h)
    # APNG: OpenCV composes frames on RGBA canvases (the frame, the current and the next one).
    work = 2 * width * height if animated else 0
    return ImageHeader("PNG", width, height, 4 if animated else channels, 2 if depth == 16 else 1, orientation, work)


def _bmp(r: _Reader) -> ImageHeader:
    (info,) = struct.unpack("<I", r.at(14, 4))
    if info == 12:  # BITMAPCOREHEADER: 16-bit sides
        width, height, _, bits = struct.unpack("<HHHH", r.at(18, 8))
    elif info >= 36:  # OpenCV reads every longer header as BITMAPINFOHEADER: signed 32-bit sides
        width, height, _, bits = struct.unpack("<iiHH", r.at(18, 12))
        if height == -(2**31):
            raise _Unreadable("BMP height")
        height = abs(height)  # negative: stored top-down
    else:
        raise _Unreadable(f"BMP header of {info} bytes")
    width, height = _positive(width, height)
    return ImageHeader("BMP", width, height, 4 if bits >= 32 else 3)


def _webp(r: _Reader) -> ImageHeader:
    """The first chunk's size (VP8X: the canvas), then the chunks after it for EXIF."""
    head = r.at(12, 18)
    kind = head[:4]
    if kind == b"VP8X":
        width, height = 1 + int.from_bytes(head[12:15], "little"), 1 + int.from_bytes(head[15:18], "little")
    elif kind == b"VP8L":
        if head[8] != 0x2F:
            raise _Unreadable("bad VP8L signature")
        bits = int.from_bytes(head[9:13], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif kind == b"VP8 ":
        if head[11:14] != b"\x9d\x01\x2a":
            raise _Unreadable("bad VP8 start code")
        width, height = struct.unpack("<HH", r.at(26, 4))
        width, height = width & 0x3FFF, height & 0x3FFF
    else:
        raise _Unreadable(f"WebP chunk {kind!r}")
    width, height = _positive(width, height)
    orientation = 1
    if kind == b"VP8X":
        pos = 12
        for _ in range(_MAX_ITEMS):
            chunk = r.upto(pos, 8)
            if len(chunk) < 8:
                break
            name, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"EXIF":
                orientation = exif_orientation(r.upto(pos + 8, min(length, 1 << 20)))
                break
            pos += 8 + length + (length & 1)
    return ImageHeader("WebP", width, height, 4, 1, orientation)


_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}  # the integer ones


def _tiff(r: _Reader, head: bytes) -> ImageHeader:
    """The first directory, the one OpenCV decodes; sizes of any integer type, as libtiff reads them."""
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    if big:
        offset = struct.unpack(order + "Q", r.at(8, 8))[0]
        count = struct.unpack(order + "Q", r.at(offset, 8))[0]
        entry_size, inline, first = 20, 8, offset + 8
    else:
        offset = struct.unpack(order + "I", head[4:8])[0]
        count = struct.unpack(order + "H", r.at(offset, 2))[0]
        entry_size, inline, first = 12, 4, offset + 2
    if count > _MAX_ITEMS:
        raise _Unreadable(f"{count} TIFF tags")
    table = r.at(first, count * entry_size)
    values: dict[int, list[int]] = {}
    for i in range(count):
        entry = table[i * entry_size : (i + 1) * entry_size]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag not in (256, 257, 258, 262, 274, 277, 322, 323):
            continue
        n = struct.unpack(order + ("Q" if big else "I"), entry[4 : 4 + inline])[0]
        code = _TIFF_TYPES.get(kind)
        if code is None or n < 1:
            if tag in (256, 257):
                raise _Unreadable(f"TIFF tag {tag} of type {kind}")
            continue
        n = min(n, 16)
        size = struct.calcsize(code) * n
        field = entry[4 + inline : 4 + 2 * inline]
        data = field[:size] if size <= inline else r.at(struct.unpack(order + ("Q" if big else "I"), field)[0], size)
        values.setdefault(tag, []).extend(struct.unpack(order + code * n, data))
    if 256 not in values or 257 not in values:
        raise _Unreadable("TIFF without width and length")
    if min(values[256] + values[257]) < 0:
        raise _Unreadable("negative TIFF size")
    width, height = _positive(max(values[256]), max(values[257]))  # duplicated tags: the larger counts
    samples = max(values.get(277, [1]) + [1])
    bits = max(values.get(258, [1]) + [1])
    photometric = values.get(262, [1])[0]
    channels = samples if samples == 1 and photometric in (0, 1) else max(samples, 4)  # colour may come out as BGRA
    tile = max(values.get(322, [0])) * max(values.get(323, [0]))
    orientation = values.get(274, [1])[0]
    return ImageHeader("TIFF", width, height, channels, max(1, -(-bits // 8)), orientation if 1 <= orientation <= 8 else 1, tile)


def _gif(r: _Reader) -> ImageHeader:
    """The logical screen and the first frame's rectangle (OpenCV decodes the first frame onto the screen)."""
    width, height, flags = struct.unpack("<HHB", r.at(6, 5))
    pos = 13 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0)  # after the global colour table
    for _ in range(_MAX_ITEMS):
        block = r.upto(pos, 1)
        if block == b"\x21":  # extension: label, then sub-blocks
            pos += 2
            for _ in range(_MAX_ITEMS * 4):
                size = r.upto(pos, 1)
                if not size:
                    raise _Unreadable("truncated GIF extension")
                pos += 1 + size[0]
                if size == b"\x00":
                    break
            else:
                raise _Unreadable("endless GIF extension")
            continue
        if block == b"\x2c":
            left, top, fw, fh = struct.unpack("<HHHH", r.at(pos + 1, 8))
            width, height = max(width, left + fw), max(height, top + fh)
        break
    else:
        raise _Unreadable("no GIF frame")
    width, height = _positive(width, height)
    return ImageHeader("GIF", width, height, 4)


def _numbers(r: _Reader, start: int, count: int) -> tuple[list[int], int]:
    """``count`` decimal numbers of a PNM/PFM header (whitespace and ``#`` comments between), and where they end."""
    text = r.upto(start, _MAX_SCAN)
    found: list[int] = []
    i = 0
    while len(found) < count:
        if i >= len(text):
            raise _Unreadable("truncated header")
        c = text[i : i + 1]
        if c == b"#":
            while i < len(text) and text[i : i + 1] not in (b"\n", b"\r"):
                i += 1
        elif _is_space(c):
            i += 1
        elif c.isdigit():
            j = i
            while j < len(text) and text[j : j + 1].isdigit():
                j += 1
            if j - i > 10:
                raise _Unreadable("number too large")
            found.append(int(text[i:j]))
            i = j
        else:
            raise _Unreadable(f"unexpected {c!r} in the header")
    return found, start + i


def _pnm(r: _Reader, head: bytes) -> ImageHeader:
    kind = head[1:2]
    bitmap = kind in (b"1", b"4")
    numbers, _ = _numbers(r, 2, 2 if bitmap else 3)
    width, height = _positive(numbers[0], numbers[1])
    maxval = 1 if bitmap else numbers[2]
    return ImageHeader("PNM", width, height, 3 if kind in (b"3", b"6") else 1, 2 if maxval > 255 else 1)


def _pam(r: _Reader) -> ImageHeader:
    """``KEY value`` lines up to the first ``ENDHDR`` line (one inside a comment does not end it); repeats: the larger."""
    fields: dict[bytes, int] = {}
    text = r.upto(3, _MAX_SCAN)
    lines = text.splitlines()
    for line in lines if len(text) < _MAX_SCAN else lines[:-1]:  # a line cut by the scan limit is not read
        words = line.split(b"#", 1)[0].split()
        if not words or words[0] == b"TUPLTYPE":
            continue
        if words[0] == b"ENDHDR":
            break
        if len(words) != 2 or not words[1].isdigit() or len(words[1]) > 10:
            raise _Unreadable(f"PAM header line {line[:40]!r}")
        fields[words[0].upper()] = max(fields.get(words[0].upper(), 0), int(words[1]))
    else:
        raise _Unreadable("PAM without ENDHDR")
    width, height = _positive(fields.get(b"WIDTH", 0), fields.get(b"HEIGHT", 0))
    return ImageHeader("PAM", width, height, max(1, fields.get(b"DEPTH", 1)), 2 if fields.get(b"MAXVAL", 255) > 255 else 1)


def _pfm(r: _Reader, head: bytes) -> ImageHeader:
    numbers, _ = _numbers(r, 2, 2)
    width, height = _positive(*numbers)
    return ImageHeader("PFM", width, height, 3 if head[1:2] == b"F" else 1, 4)


_HDR_SIZE = re.compile(rb"-Y\s*([0-9]{1,10})\s*\+X\s*([0-9]{1,10})")


def _hdr(r: _Reader) -> ImageHeader:
    """Lines as OpenCV's reader cuts them (``fgets`` into 128 bytes): up to the blank one, then ``-Y H +X W``."""
    text = r.upto(0, _MAX_SCAN)
    pos = 0

    def fgets() -> bytes:
        nonlocal pos
        end = text.find(b"\n", pos, pos + 127)
        line = text[pos : end + 1] if end >= 0 else text[pos : pos + 127]
        pos += len(line)
        return line

    line = fgets()
    for _ in range(_MAX_ITEMS):
        line = fgets()
        if not line or line[:1] in (b"\x00", b"\n"):
            break
    if line != b"\n":
        raise _Unreadable("Radiance header without a blank line")
    match = _HDR_SIZE.match(fgets())
    if match is None:
        raise _Unreadable("Radiance header without -Y H +X W")
    height, width = _positive(int(match.group(1)), int(match.group(2)))
    return ImageHeader("Radiance HDR", width, height, 3, 4)


def _sun(r: _Reader) -> ImageHeader:
    width, height = struct.unpack(">ii", r.at(4, 8))
    width, height = _positive(width, height)
    return ImageHeader("Sun raster", width, height, 3)


def _j2k_siz(r: _Reader, pos: int) -> ImageHeader:
    """The SIZ segment right after SOC: the reference grid less its offset, and every component."""
    if r.at(pos, 4) != b"\xff\x4f\xff\x51":
        raise _Unreadable("JPEG 2000 codestream without SIZ")
    x, y, x0, y0 = struct.unpack(">IIII", r.at(pos + 8, 16))
    (components,) = struct.unpack(">H", r.at(pos + 40, 2))
    if components < 1:
        raise _Unreadable("JPEG 2000 without components")
    depth = max((b & 0x7F) + 1 for b in r.at(pos + 42, 3 * components)[::3])
    width, height = _positive(x - x0, y - y0)
    # OpenJPEG decodes every component into 32-bit samples before OpenCV converts them.
    return ImageHeader("JPEG 2000", width, height, components, 4 if depth > 0 else 1)


def _boxes(r: _Reader, start: int, end: int):
    """(type, data start, data end) of ISO/JP2 boxes between ``start`` and ``end``."""
    pos = start
    for _ in range(_MAX_ITEMS):
        if pos + 8 > end:
            return
        size, kind = struct.unpack(">I4s", r.at(pos, 8))
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", r.at(pos + 8, 8))[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise _Unreadable(f"bad box {kind!r}")
        yield kind, pos + header, pos + size
        pos += size
    raise _Unreadable(f"more than {_MAX_ITEMS} boxes")


def _jp2(r: _Reader, head: bytes) -> ImageHeader:
    if head[:4] == b"\xff\x4f\xff\x51":
        return _j2k_siz(r, 0)
    found: ImageHeader | None = None
    declared = (0, 0)
    for kind, start, end in _boxes(r, 0, r.size):
        if kind == b"jp2h":
            for sub, s, _ in _boxes(r, start, end):
                if sub == b"ihdr":
                    h, w = struct.unpack(">II", r.at(s, 8))
                    declared = (max(declared[0], w), max(declared[1], h))
        elif kind == b"jp2c":
            found = _j2k_siz(r, start)
            break
    if found is None:
        raise _Unreadable("JPEG 2000 without a codestream")
    width, height = max(found.width, declared[0]), max(found.height, declared[1])
    return ImageHeader("JPEG 2000", width, height, found.channels, found.sample_bytes)


def _avif(r: _Reader) -> ImageHeader:
    """Still AVIF only: the largest image spatial extent (ispe) of any item; sequences are refused."""
    width = height = 0
    for kind, start, end in _boxes(r, 0, r.size):
        if kind == b"ftyp":
            brands = r.at(start, end - start)
            if any(brands[i : i + 4] == b"avis" for i in range(0, len(brands) - 3, 4)):
                raise _Unreadable("AVIF image sequences are not supported")
        elif kind == b"moov":
            raise _Unreadable("AVIF image sequences are not supported")
        elif kind == b"meta":
            for sub, s, e in _boxes(r, start + 4, end):  # meta is a full box: version and flags first
                if sub != b"iprp":
                    continue
                for prop, ps, pe in _boxes(r, s, e):
                    if prop != b"ipco":
                        continue
                    for item, ist, _ in _boxes(r, ps, pe):
                        if item == b"ispe":
                            w, h = struct.unpack(">II", r.at(ist + 4, 8))
                            width, height = max(width, w), max(height, h)
    if not width or not height:
        raise _Unreadable("AVIF without image sizes (ispe)")
    width, height = _positive(width, height)
    return ImageHeader("AVIF", width, height, 4, 2)  # up to 12-bit samples, alpha


def read_header(path: str | os.PathLike[str]) -> ImageHeader:
    """The header of an image file, or a one-line DataError: missing, empty, not a format fan-edge reads, unreadable.

    Reads a few hundred bytes (a few more where EXIF sits after the pixels),
    never the pixels: cheap enough for every file of a dataset before a
    long job.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such image")
    try:
        size = p.stat().st_size
        if size == 0:
            raise DataError(f"{p}: empty file")
        with open(p, "rb") as fh:
            head = fh.read(_HEAD)
            kind = sniff_format(head)
            if kind is None:
                raise DataError(f"{p}: not a readable image (not one of: {', '.join(FORMATS)})")
            r = _Reader(fh, size)
            if kind == "JPEG":
                return _jpeg(r)
            if kind == "PNG":
                return _png(r)
            if kind == "BMP":
                return _bmp(r)
            if kind == "WebP":
                return _webp(r)
            if kind == "TIFF":
                return _tiff(r, head)
            if kind == "GIF":
                return _gif(r)
            if kind == "PNM":
                return _pnm(r, head)
            if kind == "PAM":
                return _pam(r)
            if kind == "PFM":
                return _pfm(r, head)
            if kind == "Radiance HDR":
                return _hdr(r)
            if kind == "Sun raster":
                return _sun(r)
            if kind == "JPEG 2000":
                return _jp2(r, head)
            return _avif(r)
    except _Unreadable as exc:
        raise DataError(f"{p}: not a readable image ({kind} header: {exc})") from None
    except (OSError, struct.error, OverflowError) as exc:
        raise DataError(f"{p}: not a readable image ({type(exc).__name__} reading its header)") from None
