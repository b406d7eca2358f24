"""Issue 18, inputs: EXIF orientation, image bombs in every format, boxes of extreme values, the training log.

Each class is checked on several members, not only the reported one:

- a real AFW face stored sideways under each of the 8 EXIF orientations, as
  JPEG, PNG, WebP and TIFF, reads upright and gives the upright landmarks;
- a header that declares too many pixels (or bytes) is refused before any
  decoder runs, in every format OpenCV decodes, whatever the field types and
  tricks (TIFF sizes as SSHORT, SLONG or LONG8, BigTIFF, duplicated tags, JPEG
  stray bytes and progressive frames, APNG frames beyond the canvas, a PAM
  ENDHDR inside a comment, Radiance lines cut where OpenCV's reader cuts them);
  formats we cannot bound are refused; and a fresh process refusing a real
  15000 x 15000 Radiance bomb stays small;
- boxes that are infinite in effect (1e308, 5e9, a 400-digit JSON integer,
  booleans, sub-pixel sides) are one typed line from the CLI, the session,
  the crop functions and a dataset's .pts;
- a training run killed between its end-of-epoch save and its log line, or
  just before that save, logs every epoch exactly once after resuming.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from fan_edge.errors import BoxError, DataError

cv2 = pytest.importorskip("cv2")
REPO = Path(__file__).resolve().parents[1]


# ---- helpers ---------------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _tiff(entries: list[tuple[int, int, int]], big: bool = False) -> bytes:
    """A TIFF holding only a first directory of (tag, type, value) entries, value inline."""
    codes = {1: "B", 3: "H", 4: "I", 8: "h", 9: "i", 16: "Q"}
    inline = 8 if big else 4
    body = b""
    for tag, kind, value in entries:
        field = struct.pack("<" + codes[kind], value).ljust(inline, b"\0")
        body += struct.pack("<HH", tag, kind) + struct.pack("<Q" if big else "<I", 1) + field
    if big:
        return b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", len(entries)) + body + b"\0" * 8
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)) + body + b"\0" * 4


def _box(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", 8 + len(data)) + kind + data


def _siz(w: int, h: int, components: int = 3) -> bytes:
    siz = struct.pack(">HIIIIIIIIH", 0, w, h, 0, 0, w, h, 0, 0, components) + b"\x07\x01\x01" * components
    return b"\xff\x4f\xff\x51" + struct.pack(">H", len(siz) + 2) + siz


def _jpeg_sof(marker: int, w: int, h: int, junk: bytes = b"") -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = bytes([0xFF, marker]) + struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + junk + sof + b"\xff\xd9"


S = 20000  # pixels a side: 400 M pixels, twice MAX_PIXELS
PAM_TRICK = b"P7\nWIDTH 1\nHEIGHT 1\n# ENDHDR\nWIDTH 20000\nHEIGHT 20000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n"
HDR_TRICK = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n#" + b"a" * 126 + b"\n-Y 20000 +X 20000\n\n-Y 1 +X 1\n"  # fgets cuts at 127

BOMBS: dict[str, tuple[bytes, str]] = {
    "gif-screen.gif": (b"GIF89a" + struct.pack("<HHBBB", S, S, 0, 0, 0) + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
                       + b"\x02\x02\x4c\x01\x00\x3b", "20000x20000"),
    "gif-frame-beyond-screen.gif": (b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0) + b"\x21\xf9\x04\x00\x00\x00\x00\x00"
                                    + b"\x2c" + struct.pack("<HHHHB", 0, 0, S, S, 0) + b"\x02\x02\x4c\x01\x00\x3b", "20000x20000"),
    "tiff-short.tif": (_tiff([(256, 3, S), (257, 3, S), (258, 3, 8)]), "20000x20000"),
    "tiff-long.tif": (_tiff([(256, 4, S), (257, 4, S)]), "20000x20000"),
    "tiff-sshort.tif": (_tiff([(256, 8, S), (257, 8, S)]), "20000x20000"),
    "tiff-slong.tif": (_tiff([(256, 9, S), (257, 9, S)]), "20000x20000"),
    "tiff-duplicated-tags.tif": (_tiff([(256, 4, S), (256, 4, 10), (257, 4, S), (257, 4, 10)]), "20000x20000"),
    "bigtiff-long8.tif": (_tiff([(256, 16, S), (257, 16, S)], big=True), "20000x20000"),
    "tiff-float64-144mp.tif": (_tiff([(256, 4, 12000), (257, 4, 12000), (258, 3, 64), (339, 3, 3)]), "would decode to 1.1 GiB"),
    "bmp-info.bmp": (b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack("<IiiHHI", 40, S, S, 1, 24, 0) + b"\0" * 20,
                     "20000x20000"),
    "bmp-top-down.bmp": (b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack("<IiiHHI", 40, S, -S, 1, 24, 0) + b"\0" * 20,
                         "20000x20000"),
    "bmp-v5.bmp": (b"BM" + struct.pack("<IHHI", 0, 0, 0, 138) + struct.pack("<IiiHHI", 124, S, S, 1, 32, 0) + b"\0" * 104,
                   "20000x20000"),
    "png-ihdr.png": (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", S, S, 8, 2, 0, 0, 0)) + _chunk(b"IEND", b""),
                     "20000x20000"),
    "apng-frame-beyond-canvas.png": (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 8, 6, 0, 0, 0))
                                     + _chunk(b"acTL", struct.pack(">II", 1, 0))
                                     + _chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, S, S, 0, 0, 1, 1, 0, 0))
                                     + _chunk(b"IEND", b""), "20000x20000"),
    "webp-vp8x.webp": (b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\0" * 4
                       + (16382).to_bytes(3, "little") * 2, "16383x16383"),
    "webp-vp8l.webp": (b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8L" + struct.pack("<I", 10) + b"\x2f"
                       + (16383 | (16383 << 14)).to_bytes(4, "little") + b"\0" * 5, "16384x16384"),
    "webp-vp8.webp": (b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8 " + struct.pack("<I", 10) + b"\0\0\0\x9d\x01\x2a"
                      + struct.pack("<HH", 16383, 16383), "16383x16383"),
    "pnm-p6.ppm": (b"P6\n# a comment\n20000 20000\n255\n", "20000x20000"),
    "pnm-p5-16bit.pgm": (b"P5 20000 20000 65535\n", "20000x20000"),
    "pam-endhdr-in-comment.pam": (PAM_TRICK, "20000x20000"),
    "pfm.pfm": (b"PF\n20000 20000\n-1.0\n", "20000x20000"),
    "hdr.hdr": (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 20000 +X 20000\n", "20000x20000"),
    "hdr-line-cut-like-fgets.hdr": (HDR_TRICK, "20000x20000"),
    "hdr-100mp.hdr": (b"#?RGBE\nFORMAT=32-bit_rle_rgbe\n\n-Y 10000 +X 10000\n", "would decode to 1.1 GiB"),
    "sun.ras": (b"\x59\xa6\x6a\x95" + struct.pack(">iiiiiii", S, S, 24, 0, 1, 0, 0), "20000x20000"),
    "j2k-codestream.j2k": (_siz(S, S), "20000x20000"),
    "jp2-small-ihdr-huge-codestream.jp2": (
        b"\x00\x00\x00\x0cjP  \r\n\x87\n" + _box(b"ftyp", b"jp2 \0\0\0\0jp2 ")
        + _box(b"jp2h", _box(b"ihdr", struct.pack(">IIHBBBB", 10, 10, 3, 7, 7, 0, 0))) + _box(b"jp2c", _siz(S, S)), "20000x20000"),
    "jpeg-junk-before-sof.jpg": (_jpeg_sof(0xC0, S, S, junk=b"\x00\x13\x37"), "20000x20000"),
    "jpeg-progressive.jpg": (_jpeg_sof(0xC2, S, S), "20000x20000"),
    "jpeg-lossless-arithmetic.jpg": (_jpeg_sof(0xCB, S, S), "20000x20000"),
    "avif.avif": (_box(b"ftyp", b"avif\0\0\0\0avifmif1miaf") + _box(b"meta", b"\0\0\0\0" + _box(b"iprp", _box(b"ipco", _box(
        b"ispe", b"\0\0\0\0" + struct.pack(">II", 64, 64)) + _box(b"ispe", b"\0\0\0\0" + struct.pack(">II", S, S))))),
        "20000x20000"),
    "avif-sequence.avif": (_box(b"ftyp", b"avis\0\0\0\0avisavifmsf1"), "sequences are not supported"),
    "openexr.exr": (b"v/1\x01" + b"\0" * 60, "not a readable image"),
    "jpeg-xl.jxl": (b"\xff\x0a" + b"\0" * 30, "not a readable image"),
    "jpeg-height-0-dnl.jpg": (_jpeg_sof(0xC0, 640, 0), "not a readable image"),
}


@pytest.fixture()
def no_decoding(monkeypatch):
    """cv2.imdecode off limits: what the header check refuses must never reach a decoder."""

    def refuse(*args, **kwargs):
        raise AssertionError("an image bomb was handed to the decoder")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    monkeypatch.setattr(cv2, "imread", refuse)


@pytest.mark.parametrize("name", list(BOMBS))
def test_bombs_are_refused_from_the_header_in_every_format(name: str, tmp_path: Path, no_decoding) -> None:
    from fan_edge.files.images import check_image_file, load_image, read_image

    data, message = BOMBS[name]
    path = tmp_path / name
    path.write_bytes(data)
    for read in (read_image, load_image, check_image_file):
        with pytest.raises(DataError) as excinfo:
            read(path)
        text = str(excinfo.value)
        assert text.startswith(str(path)) and message in text and "\n" not in text, text


def test_a_file_over_a_gibibyte_is_not_read_into_memory(tmp_path: Path, no_decoding) -> None:
    from fan_edge.files.images import read_image

    path = tmp_path / "padded.jpg"
    path.write_bytes(_jpeg_sof(0xC0, 64, 64))
    with open(path, "r+b") as fh:
        fh.truncate((1 << 30) + 1)  # sparse: no disk used
    with pytest.raises(DataError, match="GiB on disk"):
        read_image(path)


def test_the_cli_refuses_a_gif_bomb_in_one_line(tmp_path: Path, capfd, no_decoding) -> None:
    from fan_edge import cli

    path = tmp_path / "bomb.gif"
    path.write_bytes(BOMBS["gif-screen.gif"][0])
    code = cli.main(["predict", str(path), "--model", str(tmp_path / "m.onnx"), "--boxes", "1,1,50,50"])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "20000x20000 is larger than 200,000,000 pixels" in err, err


def _hdr_bomb(width: int, height: int) -> bytes:
    """A valid run-length Radiance file of one colour: 14 MB for 15000 x 15000 (5.2 GB decoded before the fix)."""
    runs = b"".join(bytes((128 + min(127, width - i), v)) for v in (128, 100, 60, 129) for i in range(0, width, 127))
    return f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode() + (bytes((2, 2, width >> 8, width & 255)) + runs) * height


_PEAK = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a regression fails here instead of taking the machine
from fan_edge.files.images import read_image
from fan_edge.errors import DataError
try:
    read_image(sys.argv[1])
    print("decoded")
except DataError as exc:
    print(exc)
print(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024)  # not ru_maxrss: it keeps the forking parent's peak across exec
"""


def test_a_real_bomb_costs_a_fresh_process_no_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.hdr"
    path.write_bytes(_hdr_bomb(15000, 15000))
    done = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    message, peak = done.stdout.strip().splitlines()
    assert "15000x15000 is larger than 200,000,000 pixels" in message, done.stdout + done.stderr
    assert int(peak) < 300, f"peak RSS {peak} MiB"


def _small_file(ext: str, folder: Path) -> Path:
    """An 80 x 60 image with a gradient in each channel, written by OpenCV as ``ext`` (float for PFM and HDR, grey for
    PGM); the test skips where this OpenCV cannot write the format."""
    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = np.arange(80) * 3, 90, np.arange(60)[:, None] * 4
    image = rgb.astype(np.float32) / 255 if ext in (".pfm", ".hdr") else (rgb[..., 0] if ext == ".pgm" else rgb[..., ::-1])
    try:
        ok, data = cv2.imencode(ext, np.ascontiguousarray(image))
    except cv2.error:
        ok = False
    if not ok:
        pytest.skip(f"this OpenCV cannot write {ext}")
    path = folder / f"small{ext}"
    path.write_bytes(data.tobytes())
    return path


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tif", ".ppm", ".pgm", ".pam", ".pfm", ".hdr", ".ras",
                                 ".jp2", ".gif", ".avif"])
def test_ordinary_files_of_every_format_still_read(ext: str, tmp_path: Path) -> None:
    """The header readers refuse bombs, not images: a small file of each format decodes to its own size."""
    from fan_edge.files.images import check_image_file, read_image

    path = _small_file(ext, tmp_path)
    assert check_image_file(path) == (80, 60)
    assert read_image(path).shape[:2] == (60, 80)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tif", ".ppm", ".pgm", ".gif", ".pfm", ".hdr", ".jp2"])
def test_the_pillow_decoder_gives_opencvs_pixels_or_says_it_needs_opencv(ext: str, tmp_path: Path, monkeypatch) -> None:
    """The runtime-only install decodes with Pillow: the same array as OpenCV's for its formats, one line for the rest."""
    from fan_edge.files.headers import read_header
    from fan_edge.files.images import PILLOW_FORMATS, read_image
    from fan_edge.errors import DataError

    path = _small_file(ext, tmp_path)
    monkeypatch.setenv("FAN_EDGE_IMAGE_DECODER", "opencv")
    by_opencv = read_image(path)
    monkeypatch.setenv("FAN_EDGE_IMAGE_DECODER", "pillow")
    if read_header(path).format in PILLOW_FORMATS:
        by_pillow = read_image(path)
        assert by_pillow.dtype == by_opencv.dtype and by_pillow.shape == by_opencv.shape
        if ext == ".jpg":
            np.testing.assert_array_equal(by_pillow, by_opencv)  # libjpeg-turbo in both, same settings
        else:
            np.testing.assert_array_equal(by_pillow[..., :3] if ext == ".gif" else by_pillow, by_opencv[..., :3] if ext == ".gif" else by_opencv)
    else:
        with pytest.raises(DataError, match=r"images need OpenCV, which this install lacks: pip install opencv-python-headless"):
            read_image(path)


def test_the_pillow_decoder_sizes_the_image_from_its_own_reading(tmp_path: Path, monkeypatch) -> None:
    """A bomb that passes fan-edge's header reader (here: the limit lowered) is still refused before Pillow decodes it."""
    import fan_edge.files.images as images
    from fan_edge.errors import DataError

    path = tmp_path / "big.png"
    path.write_bytes(cv2.imencode(".png", np.zeros((300, 400, 3), np.uint8))[1].tobytes())
    monkeypatch.setenv("FAN_EDGE_IMAGE_DECODER", "pillow")
    monkeypatch.setattr(images, "check_size", lambda *_: None)  # as if the header reader had read a smaller size
    monkeypatch.setattr(images, "MAX_PIXELS", 100_000)
    with pytest.raises(DataError, match=r"400x300 is larger than 100,000 pixels"):
        images.read_image(path)


# ---- EXIF orientation ------------------------------------------------------------------------------------------

INVERSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}  # stored = apply(INVERSE[o], upright) shows upright under o


@pytest.fixture(scope="module")
def face(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """A real AFW face, cut to a 260 x 200 region around it (fast to encode 32 times), and its landmark box there."""
    from fan_edge.files.images import read_image
    from fan_edge.files.folders import landmark_boxes
    from fan_edge.files.pts import read_pts

    pts = sorted((data_dir / "afw").glob("*.pts"))[0]
    image, points = read_image(pts.with_suffix(".jpg")), read_pts(pts)
    box = landmark_boxes(points[None])[0]
    cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
    x0, y0 = max(cx - 130, 0), max(cy - 100, 0)
    region = np.ascontiguousarray(image[y0 : y0 + 200, x0 : x0 + 260])
    assert region.shape == (200, 260, 3)
    return region, box - [x0, y0, x0, y0]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The bundled default model as an ONNX artifact with fan-export's contract, via torch's quick legacy exporter."""
    pytest.importorskip("onnxruntime")
    from conftest import quick_onnx

    from fan_edge.runtime import LandmarkSession

    path = quick_onnx("default", tmp_path_factory.mktemp("model") / "default.onnx", "default")
    with LandmarkSession(path) as s:
        yield s


def test_apply_orientation_is_what_pillow_shows() -> None:
    pytest.importorskip("PIL")
    import io

    from PIL import Image, ImageOps

    from fan_edge.files.images import apply_orientation

    stored = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    for o in range(1, 9):
        exif = Image.Exif()
        exif[274] = o
        data = io.BytesIO()
        Image.fromarray(stored).save(data, "PNG", exif=exif)
        shown = np.asarray(ImageOps.exif_transpose(Image.open(data)))
        np.testing.assert_array_equal(apply_orientation(stored, o), shown, err_msg=f"orientation {o}")


@pytest.mark.parametrize("decoder", ["opencv", "pillow"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_sideways_photos_read_upright_and_give_the_upright_landmarks(fmt: str, decoder: str, face, session, tmp_path: Path,
                                                                    monkeypatch) -> None:
    """Each of the 8 orientations: the file stores the face turned or mirrored, its EXIF tag says how to show it.

    read_image shows it as Pillow's exif_transpose does; the landmarks for the box given in that displayed frame
    are the upright photo's (exactly for lossless formats; within a fraction of a pixel for JPEG, re-encoded).
    """
    pytest.importorskip("PIL")
    from PIL import Image, ImageOps

    from fan_edge.files.images import apply_orientation, check_image_file, read_image

    monkeypatch.setenv("FAN_EDGE_IMAGE_DECODER", decoder)
    upright, box = face
    lossless = {"lossless": True} if fmt == "WEBP" else ({"quality": 95} if fmt == "JPEG" else {})
    suffix = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif"}[fmt]
    reference = None
    for o in range(1, 9):
        path = tmp_path / f"o{o}{suffix}"
        exif = Image.Exif()
        exif[274] = o
        Image.fromarray(apply_orientation(upright, INVERSE[o])).save(path, fmt, exif=exif, **lossless)
        shown = read_image(path)
        assert check_image_file(path) == (260, 200) and shown.shape == (200, 260, 3), (o, shown.shape)
        pil = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        if fmt == "JPEG":
            assert np.abs(shown.astype(int) - pil).mean() < 2.0, o
        else:
            np.testing.assert_array_equal(shown, pil, err_msg=f"orientation {o}")
            np.testing.assert_array_equal(shown, upright, err_msg=f"orientation {o}")
        points, _ = session.predict(shown, box[None])
        if reference is None:
            reference = points
        error = np.linalg.norm(points - reference, axis=-1)
        if fmt == "JPEG":
            assert error.mean() < 0.5 and error.max() < 3.0, (o, error.mean(), error.max())
        else:
            assert error.max() < 1e-3, (o, error.max())


# ---- boxes -----------------------------------------------------------------------------------------------------

EXTREME_BOXES = {
    "1e308": ([[0, 0, 1e308, 1e308]], "100 times"),
    "5e9": ([[0, 0, 5e9, 5e9]], "100 times"),
    "minus-1e308": ([[-1e308, -1e308, 50, 50]], "100 times"),
    "huge-int": ([[0, 0, 10**400, 50]], "too large for a float"),
    "sub-pixel": ([[10, 10, 10.1, 10.1]], "smaller than 0.5 pixel"),
    "booleans": ([[True, 0, 5, 5]], "must be numbers"),
    "strings": ([["1", 0, 5, 5]], "must be numbers"),
    "complex": (np.array([[1 + 1j, 0, 5, 5]]), "must be numbers"),
    "float128-overflow": (np.array([[0, 0, 50, 50]], np.longdouble) * np.longdouble(10) ** 400, "not finite"),
}


@pytest.mark.parametrize("name", list(EXTREME_BOXES))
def test_the_api_refuses_extreme_boxes_in_one_typed_line(name: str, session, face) -> None:
    from fan_edge.runtime.crop import CropSpec, check_boxes, crop_matrices, crop_matrix
    from fan_edge.runtime.detect import detect_and_predict

    image = face[0]
    boxes, message = EXTREME_BOXES[name]
    calls = [lambda: session.predict(image, boxes), lambda: session.crops(image, boxes),
             lambda: detect_and_predict(session, image, boxes=boxes, refine_passes=1),
             lambda: check_boxes(boxes, 260, 200)]
    if message != "100 times":  # without an image: the image-free checks
        calls += [lambda: crop_matrices(boxes, 128, CropSpec()), lambda: crop_matrix(boxes[0], 128, CropSpec()),
                  lambda: check_boxes(boxes)]
    for call in calls:
        with pytest.raises(BoxError, match=re.escape(message)) as excinfo:
            call()
        assert isinstance(excinfo.value, DataError) and isinstance(excinfo.value, ValueError)
        assert "\n" not in str(excinfo.value)


def test_crop_functions_refuse_what_overflows_without_an_image() -> None:
    from fan_edge.runtime.crop import CropSpec, crop_matrices, crop_matrix

    for box in ([0, 0, 1e308, 1e308], [1e300, 1e300, 2e300, 2e300], [0, 0, np.inf, 5]):
        for call in (lambda: crop_matrix(np.array(box), 128, CropSpec()), lambda: crop_matrices([box], 128, CropSpec())):
            with pytest.raises(BoxError):
                call()
    assert np.isfinite(crop_matrix(np.array([0, 0, 5e9, 5e9]), 128, CropSpec())).all()  # large, but the arithmetic holds


@pytest.mark.parametrize("text, message", [
    ("0,0,1e308,1e308", "beyond 1e+15 pixels"),
    ("0,0,5e9,5e9", "more than 100 times the 640x480 image"),
    ("0,0,1e999,50", "not finite"),
    ("0,0,nan,50", "not finite"),
    ("10,10,10.2,10.2", "smaller than 0.5 pixel"),
    ("json:[[0, 0, 1" + "0" * 400 + ", 50]]", "too large for a float"),
    ("json:[[0, 0, 1e400, 50]]", "not finite"),
    ("json:[[true, false, 5, 5]]", "must be numbers"),
    ("json:{\"boxes\": [[\"1\", 0, 5, 5]]}", "must be numbers"),
    ("json:[[0, 0, 5000000000, 5000000000]]", "more than 100 times the 640x480 image"),
])
def test_the_cli_refuses_extreme_boxes_in_one_line(text: str, message: str, tmp_path: Path, capfd) -> None:
    from fan_edge import cli

    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((480, 640, 3), 128, np.uint8))
    if text.startswith("json:"):
        (tmp_path / "boxes.json").write_text(text[5:])
        text = str(tmp_path / "boxes.json")
    code = cli.main(["predict", str(photo), "--model", str(tmp_path / "m.onnx"), "--boxes", text, "--out", str(tmp_path / "o.png")])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o.png").exists()


def test_a_pts_of_extreme_coordinates_is_refused_when_the_folder_is_read(data_dir: Path, tmp_path: Path) -> None:
    from fan_edge.data import FaceFolder
    from fan_edge.files.pts import read_pts, write_pts

    pts = sorted((data_dir / "afw").glob("*.pts"))[0]
    for name, scale, message in (("far", 1e300, "100 times"), ("collapsed", 0.0, "degenerate")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "face.jpg").symlink_to(pts.with_suffix(".jpg"))
        points = read_pts(pts)
        write_pts(folder / "face.pts", points * scale if scale else np.zeros_like(points) + 40)
        with pytest.raises(DataError, match=message) as excinfo:
            FaceFolder(folder, 64)
        assert str(excinfo.value).startswith(str(folder / "face.pts")) and "\n" not in str(excinfo.value)


# ---- the training log ------------------------------------------------------------------------------------------


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler catches it."""


def _tiny_run(data_dir: Path, tmp_path: Path):
    from fan_edge.train import TrainSpec

    faces = tmp_path / "faces"
    faces.mkdir()
    for jpg in sorted((data_dir / "helen_train").glob("*.jpg"))[:8]:
        (faces / jpg.name).symlink_to(jpg)
        (faces / jpg.with_suffix(".pts").name).symlink_to(jpg.with_suffix(".pts"))
    return TrainSpec(model="fan1-w32-i128", data=[str(faces)], out=str(tmp_path / "run"), epochs=2, batch_size=4, workers=0,
                     lr=1e-3, seed=3)


@pytest.mark.parametrize("where", ["after-the-save", "at-the-save"])
def test_a_run_killed_at_the_end_of_an_epoch_logs_each_epoch_once(where: str, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Killed just after epoch 1's end-of-epoch save (before its log line), or inside that save: resumed, the
    log lists epoch 1/2 and 2/2 once each, as the checkpoint history does."""
    pytest.importorskip("torch")
    from fan_edge.train import train
    from fan_edge.train import trainer

    spec = _tiny_run(data_dir, tmp_path)
    with monkeypatch.context() as patch:
        if where == "after-the-save":
            info = trainer.log.info

            def kill_at_the_line(msg, *args, **kwargs):
                if args and str(args[0]).startswith("epoch 1/"):
                    raise _Killed
                info(msg, *args, **kwargs)

            patch.setattr(trainer.log, "info", kill_at_the_line)
        else:
            save_state = trainer._save_state

            def kill_in_the_save(path, state):
                if state["epoch"] == 1 and state["batch"] == 0:
                    raise _Killed
                save_state(path, state)

            patch.setattr(trainer, "_save_state", kill_in_the_save)
        with pytest.raises(_Killed):
            train(spec)
    result = train(spec)
    assert not result["stopped"]
    text = (Path(spec.out) / "train.log").read_text()
    assert text.count("epoch 1/2 ") == 1 and text.count("epoch 2/2 ") == 1, text
    history = trainer.read_training_state(Path(spec.out) / trainer.LAST, trainer.RESUME_ENTRIES)["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert ("logged on resume" in text) == (where == "after-the-save")


def test_unlogged_epochs_finds_exactly_the_missing_lines(tmp_path: Path) -> None:
    """The helper fan-train and fan-quantize --qat share (qat.log has the same save-then-log order)."""
    from fan_edge.train.trainer import epoch_line, unlogged_epochs

    history = [{"epoch": 1, "loss": 0.5, "seconds": 3.2}, {"epoch": 2, "loss": 0.25, "seconds": 3.1, "nme_io": 7.5}]
    log = tmp_path / "qat.log"
    log.write_text("2025-01-01 00:00:00 resuming last.pt at epoch 1 batch 0\n"
                   f"2025-01-01 00:00:01 {epoch_line(history[0], 2)}\n")
    assert epoch_line(history[1], 2) == "epoch 2/2 loss=0.2500 seconds=3.1 nme_io=7.5000"
    assert unlogged_epochs(log, history, 2) == [epoch_line(history[1], 2)]
    assert unlogged_epochs(tmp_path / "absent.log", history, 2) == [epoch_line(h, 2) for h in history]
