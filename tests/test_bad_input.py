"""Bad input everywhere: one line naming the problem, a typed error, a non-zero exit, no traceback.

The CLI table runs each command's real entry point (``fan_edge.cli``'s main
functions, what ``pyproject.toml``'s scripts call) in this process and reads
stderr at the file-descriptor level, so that what a codec or a backend
prints by itself counts too. Each bad input must exit non-zero with exactly
one stderr line ``PROG: error: ...`` naming the problem; the inputs that
must work (grey, RGBA, 16-bit photos, a 1x1 photo) must exit 0 with an
empty stderr. The API table checks the exception types behind those lines.
A subprocess checks the real process: the exit code, ``--debug``'s
traceback, and that a 20000 x 20000 photo is refused without being decoded.

Fast on purpose (the tiny model of ``conftest.py``, exported once by
PyTorch's TorchScript-based ONNX exporter in about a second instead of
fan-export's dynamo pipeline; that pipeline has its own tests): every
rejected input must fail before any slow step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fan_edge import cli
from fan_edge.errors import BackendError, CheckpointError, ConfigError, DataError, ExportError

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")
pytest.importorskip("dlib")  # fan-edge predict without --boxes detects faces

REPO = Path(__file__).resolve().parents[1]
HUGE = 20000  # pixels a side: 400 M pixels, twice images.MAX_PIXELS; 1.2 GB decoded as RGB
MAIN: dict[str, Callable[[list[str]], int]] = {
    "fan-edge": cli.main,
    "fan-export": cli.export_main,
    "fan-train": cli.train_main,
    "fan-bench": cli.bench_main,
}


# ---- files -------------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid RGB PNG of one colour at any size, without ever holding its pixels.

    Each row is deflated once after a full flush (which resets the
    compressor's history), so every later row compresses to the same bytes;
    only the Adler-32 of the whole stream has to run over all of them.
    """
    row = b"\x00" + bytes(rgb) * width
    deflate = zlib.compressobj(9)
    first = deflate.compress(row) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(row) + deflate.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(height):
        adler = zlib.adler32(row, adler)
    idat = first + again * (height - 1) + b"\x03\x00" + struct.pack(">I", adler)  # an empty final block, then the checksum
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _photo(seed: int = 0, size: tuple[int, int] = (160, 150)) -> np.ndarray:
    """A smooth RGB uint8 test photo (noise-free, so that lossy codecs keep it recognisable)."""
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    return np.dstack([128 + 100 * np.sin(xx / (9 + seed)), 128 + 100 * np.cos(yy / 7), (xx + yy) / 2 % 256]).astype(np.uint8)


def _write_images(folder: Path) -> None:
    folder.mkdir()
    rgb = _photo()
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    cv2.imwrite(str(folder / "photo.png"), bgr)
    cv2.imwrite(str(folder / "grey.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "rgba.png"), np.dstack([bgr, np.full(rgb.shape[:2], 200, np.uint8)]))
    cv2.imwrite(str(folder / "deep16.png"), bgr.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "grey16.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "tiny1x1.png"), np.full((1, 1, 3), 90, np.uint8))
    cv2.imwrite(str(folder / "int32.tif"), np.full((8, 8), -3, np.int32))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a shopping list, not a photo\n")
    (folder / "random.jpg").write_bytes(np.random.default_rng(0).bytes(4096))
    png = cv2.imencode(".png", bgr)[1].tobytes()
    (folder / "cut.png").write_bytes(png[: len(png) // 2])
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0x55  # bit rot inside the compressed pixels
    (folder / "crc.png").write_bytes(bytes(flipped))
    jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
    (folder / "cut.jpg").write_bytes(jpeg[:600])
    rotten = bytearray(jpeg)
    for i in np.random.default_rng(0).integers(len(jpeg) // 3, len(jpeg) - 10, 8):
        rotten[i] ^= 0x55
    (folder / "bitrot.jpg").write_bytes(bytes(rotten))
    (folder / "huge.png").write_bytes(solid_png(HUGE, HUGE, (90, 140, 200)))
    (folder / "a-folder.png").mkdir()


def _folder_with_pts(root: Path, name: str, faces: Path, pts: bytes) -> Path:
    """One real image beside a .pts holding ``pts``."""
    folder = root / name
    folder.mkdir()
    shutil.copy(faces / "face0.png", folder / "face0.png")
    (folder / "face0.pts").write_bytes(pts)
    return folder


def _pts_body(n: int) -> str:
    return "\n".join(f"{10 + i}.5 {20 + i % 7}.25" for i in range(n))


BAD_PTS = {
    "pts-67-points": f"version: 1\nn_points: 67\n{{\n{_pts_body(67)}\n}}\n".encode(),
    "pts-header-disagrees": f"version: 1\nn_points: 68\n{{\n{_pts_body(69)}\n}}\n".encode(),
    "pts-garbage": b"GIF89a is what this file should have been\n" * 68,
    "pts-no-closing-brace": f"version: 1\nn_points: 68\n{{\n{_pts_body(68)}\n".encode(),
    "pts-no-opening-brace": f"version: 1\nn_points: 68\n{_pts_body(68)}\n}}\n".encode(),
    "pts-nan": f"version: 1\nn_points: 68\n{{\n{_pts_body(67)}\nnan 12.0\n}}\n".encode(),
    "pts-binary": bytes(range(256)) * 8,
}


def _legacy_onnx(checkpoint: Path, out: Path) -> Path:
    """The tiny model as an ONNX artifact with fan-export's contract beside it, in about a second."""
    from conftest import quick_onnx

    return quick_onnx(str(checkpoint), out / "tiny.onnx", "tiny")


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoint: Path, synthetic_faces: Path) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("bad")
    _write_images(root / "img")
    (root / "empty").mkdir()
    (root / "nopts").mkdir()
    for i in range(3):
        shutil.copy(synthetic_faces / f"face{i}.png", root / "nopts" / f"face{i}.png")
    folders = {name: _folder_with_pts(root, name, synthetic_faces, pts) for name, pts in BAD_PTS.items()}
    for name, source in (("img-not-an-image", "notes.jpg"), ("img-empty", "empty.jpg"), ("img-20000x20000", "huge.png")):
        folder = root / name
        folder.mkdir()
        shutil.copy(root / "img" / source, folder / f"face0{Path(source).suffix}")
        shutil.copy(synthetic_faces / "face0.pts", folder / "face0.pts")
        folders[name] = folder
    (root / "boxes").mkdir()
    (root / "boxes" / "short.json").write_text(json.dumps([[10, 10, 50]]))
    (root / "boxes" / "nan.json").write_text("[[NaN, 10, 50, 60]]")
    (root / "boxes" / "broken.json").write_text("[[10, 10, 50, 60]")
    (root / "boxes" / "deep.json").write_text("[" * 200_000 + "]" * 200_000)  # under the 1 MB limit, past json's recursion
    (root / "garbage.safetensors").write_bytes(np.random.default_rng(1).bytes(2048))
    return SimpleNamespace(root=root, img=root / "img", ckpt=tiny_checkpoint, faces=synthetic_faces,
                           onnx=_legacy_onnx(tiny_checkpoint, root), folders=folders, missing=root / "no-such-folder")


# ---- the CLI table ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One command line: ``argv(env)`` for ``prog``; ``error`` the text its one-line error must hold (None: it must work)."""

    prog: str
    argv: Callable[[SimpleNamespace], list[str]]
    error: str | None
    stdout: str | None = None  # for the inputs that must work: text stdout must hold
    warning: str | None = None  # for the inputs that work with a warning: the text it logs


def predict(image: str, *extra: str) -> Callable[[SimpleNamespace], list[str]]:
    return lambda e: ["predict", str(e.img / image), "--model", str(e.onnx), *extra]


def boxes(text: str) -> Callable[[SimpleNamespace], list[str]]:
    return lambda e: ["predict", str(e.img / "photo.png"), "--model", str(e.onnx), "--boxes", text]


def boxes_file(name: str) -> Callable[[SimpleNamespace], list[str]]:
    return lambda e: ["predict", str(e.img / "photo.png"), "--model", str(e.onnx), "--boxes", str(e.root / "boxes" / name)]


def folder(e: SimpleNamespace, name: str) -> str:
    return str({"faces": e.faces, "empty": e.root / "empty", "nopts": e.root / "nopts", "missing": e.missing}.get(name)
               or e.folders[name])


def train_on(name: str, *extra: str) -> Callable[[SimpleNamespace], list[str]]:
    return lambda e: ["--model", str(e.ckpt), "--data", folder(e, name), "--out", str(e.root / "runs" / name), "--fresh",
                      "--epochs", "1", "--max-batches", "1", "--workers", "0", *extra]


def eval_on(name: str) -> Callable[[SimpleNamespace], list[str]]:
    return lambda e: ["eval", str(e.ckpt), "--data", folder(e, name)]


def export_with(*extra: str) -> Callable[[SimpleNamespace], list[str]]:
    def argv(e: SimpleNamespace) -> list[str]:
        words = [folder(e, w[1:]) if w.startswith("@") else w for w in extra]
        return ["--model", str(e.ckpt), "--output", str(e.root / "exports") + "/", "--json", *words]

    return argv


def bench_on(*extra: str) -> Callable[[SimpleNamespace], list[str]]:
    def argv(e: SimpleNamespace) -> list[str]:
        words = [folder(e, w[1:]) if w.startswith("@") else w for w in extra]
        return ["--artifact", str(e.onnx), "--out", str(e.root / "bench"), "--runs", "1", "--warmup", "0", *words]

    return argv


BOX = "20,20,130,140"
CASES: dict[str, Case] = {
    # images, through fan-edge predict
    "image-empty-file": Case("fan-edge", predict("empty.jpg", "--boxes", BOX), "empty file"),
    "image-text-named-jpg": Case("fan-edge", predict("notes.jpg", "--boxes", BOX), "not a readable image"),
    "image-random-bytes-jpg": Case("fan-edge", predict("random.jpg", "--boxes", BOX), "not a readable image"),
    "image-truncated-png": Case("fan-edge", predict("cut.png", "--boxes", BOX), "not a readable image (libpng error"),
    "image-bit-rot-png": Case("fan-edge", predict("crc.png", "--boxes", BOX), "not a readable image (libpng error"),
    "image-truncated-jpeg": Case("fan-edge", predict("cut.jpg", "--boxes", BOX), "not a readable image"),
    "image-int32-tiff": Case("fan-edge", predict("int32.tif", "--boxes", "1,1,6,6"), "unsupported image dtype int32"),
    "image-20000x20000": Case("fan-edge", predict("huge.png", "--boxes", BOX), "20000x20000 is larger than 200,000,000 pixels"),
    "image-missing": Case("fan-edge", predict("nope.jpg"), "no such image"),
    "image-is-a-folder": Case("fan-edge", predict("a-folder.png"), "no such image"),
    "image-1x1-detect": Case("fan-edge", predict("tiny1x1.png"), None, "0 face(s) detected"),
    "image-1x1-box": Case("fan-edge", predict("tiny1x1.png", "--boxes=-1,-1,1,1"), None, "1 face(s) given"),
    "image-grey": Case("fan-edge", predict("grey.png", "--boxes", BOX), None, "1 face(s) given"),
    "image-rgba": Case("fan-edge", lambda e: [*predict("rgba.png", "--boxes", BOX)(e), "--out", str(e.root / "rgba-drawn.png")],
                       None, "wrote"),
    "image-16-bit": Case("fan-edge", predict("deep16.png", "--boxes", BOX), None, "1 face(s) given"),
    "image-16-bit-grey": Case("fan-edge", lambda e: [*predict("grey16.png", "--boxes", BOX)(e),
                                                     "--out", str(e.root / "grey16-drawn.png")], None, "wrote"),
    "image-damaged-jpeg-still-decodes": Case("fan-edge", predict("bitrot.jpg", "--boxes", BOX), None, "1 face(s) given",
                                             "bitrot.jpg: decoded with errors: Corrupt JPEG data"),
    # boxes, through fan-edge predict --boxes
    "box-zero-width": Case("fan-edge", boxes("40,20,40,140"), "degenerate"),
    "box-upside-down": Case("fan-edge", boxes("20,140,130,20"), "degenerate"),
    "box-outside-image": Case("fan-edge", boxes("5000,5000,5100,5120"), "lies outside the 150x160 image"),
    "box-nan": Case("fan-edge", boxes("nan,20,130,140"), "box 0 is not finite"),
    "box-inf": Case("fan-edge", boxes("20,20,inf,140"), "box 0 is not finite"),
    "box-three-numbers": Case("fan-edge", boxes("20,20,130"), "expected x1,y1,x2,y2"),
    "box-five-numbers": Case("fan-edge", boxes("20,20,130,140,5"), "expected x1,y1,x2,y2"),
    "box-words": Case("fan-edge", boxes("left,top,right,bottom"), "boxes must be numbers"),
    "box-empty": Case("fan-edge", boxes(";"), "--boxes is empty"),
    "box-json-three-numbers": Case("fan-edge", boxes_file("short.json"), "expected a list of [x1, y1, x2, y2] boxes"),
    "box-json-nan": Case("fan-edge", boxes_file("nan.json"), "box 0 is not finite"),
    "box-json-broken": Case("fan-edge", boxes_file("broken.json"), "not JSON"),
    "box-json-deep": Case("fan-edge", boxes_file("deep.json"), "not JSON"),
    "box-json-missing": Case("fan-edge", boxes_file("nope.json"), "no such boxes file"),
    # names: models, targets, precisions, devices
    "predict-device-tpu": Case("fan-edge", predict("photo.png", "--boxes", BOX, "--device", "tpu"), "device 'tpu'"),
    "predict-model-nosuch": Case("fan-edge", lambda e: ["predict", str(e.img / "photo.png"), "--model", "nosuch"], "nosuch"),
    "predict-artifact-missing": Case("fan-edge", lambda e: ["predict", str(e.img / "photo.png"), "--model", "gone.onnx"],
                                     "no such file"),
    "predict-threads-zero": Case("fan-edge", predict("photo.png", "--boxes", BOX, "--threads", "0"),
                                 "--threads: must be between 1 and 256"),
    "predict-out-gif": Case("fan-edge", lambda e: [*predict("photo.png", "--boxes", BOX)(e), "--out", str(e.root / "x.gif")],
                            "--out must end in .png"),
    "info-model-nosuch": Case("fan-edge", lambda e: ["info", "nosuch"], "nosuch"),
    "info-width-not-16": Case("fan-edge", lambda e: ["info", "fan1-w40"], "width must be a multiple of 16"),
    "info-garbage-checkpoint": Case("fan-edge", lambda e: ["info", str(e.root / "garbage.safetensors")], "garbage.safetensors"),
    "eval-model-nosuch": Case("fan-edge", lambda e: ["eval", "nosuch", "--data", str(e.faces)], "nosuch"),
    "export-target-foo": Case("fan-export", export_with("--target", "foo"), "unknown target 'foo'"),
    "export-precision-int4": Case("fan-export", export_with("--target", "onnx", "--precision", "int4"),
                                  "unknown precision 'int4'"),
    "export-model-nosuch": Case("fan-export", lambda e: ["--model", "nosuch", "--target", "onnx", "--no-verify", "--json"],
                                "nosuch"),
    "export-input-size-zero": Case("fan-export", export_with("--target", "onnx", "--input-size", "0", "--no-verify"),
                                   "--input-size: must be between 1 and 1024"),
    "train-model-nosuch": Case("fan-train", lambda e: [*train_on("faces")(e), "--model", "nosuch"], "nosuch"),
    "bench-target-foo": Case("fan-bench", lambda e: ["--model", str(e.ckpt), "--targets", "foo:fp32"], "foo"),
    "bench-precision-int4": Case("fan-bench", lambda e: ["--model", str(e.ckpt), "--targets", "onnxruntime:int4"], "int4"),
    "bench-device-tpu": Case("fan-bench", lambda e: ["--model", str(e.ckpt), "--targets", "onnxruntime:fp32@tpu"], "tpu"),
    # what argparse itself refuses: one line too, the usage one --help away
    "command-unknown": Case("fan-edge", lambda e: ["frobnicate"], "invalid choice: 'frobnicate'"),
    "predict-no-image": Case("fan-edge", lambda e: ["predict"], "the following arguments are required: image"),
    "predict-backend-foo": Case("fan-edge", predict("photo.png", "--backend", "foo"), "invalid choice: 'foo'"),
    "predict-threads-not-a-number": Case("fan-edge", predict("photo.png", "--threads", "two"), "invalid int value: 'two'"),
    "export-no-target": Case("fan-export", lambda e: ["--model", str(e.ckpt)], "the following arguments are required: --target"),
    "export-outputs-points": Case("fan-export", export_with("--target", "onnx", "--outputs", "points"),
                                  "invalid choice: 'points'"),
    "train-no-data": Case("fan-train", lambda e: ["--model", str(e.ckpt)], "the following arguments are required: --data"),
    "train-epochs-not-a-number": Case("fan-train", train_on("faces", "--epochs", "many"), "invalid int value: 'many'"),
    "bench-runs-not-a-number": Case("fan-bench", bench_on("--runs", "lots"), "invalid int value: 'lots'"),
    # data folders
    "train-data-empty": Case("fan-train", train_on("empty"), "no images with .pts annotations found"),
    "train-data-without-pts": Case("fan-train", train_on("nopts"), "no images with .pts annotations found"),
    "train-data-missing": Case("fan-train", train_on("missing"), "not a folder"),
    "train-val-missing": Case("fan-train", lambda e: [*train_on("faces")(e), "--val", str(e.missing)], "not a folder"),
    "eval-data-empty": Case("fan-edge", eval_on("empty"), "no images with .pts annotations found"),
    "eval-data-without-pts": Case("fan-edge", eval_on("nopts"), "no images with .pts annotations found"),
    "eval-data-missing": Case("fan-edge", eval_on("missing"), "not a folder"),
    "export-calib-empty": Case("fan-export", export_with("--target", "onnx", "--precision", "int8", "--calib", "@empty"),
                               "empty: no images found"),  # calibration takes faces without .pts too
    "export-calib-missing": Case("fan-export", export_with("--target", "onnx", "--precision", "int8", "--calib", "@missing"),
                                 "not a folder"),
    "export-verify-empty": Case("fan-export", export_with("--target", "onnx", "--verify", "@empty"),
                                "no images with .pts annotations found"),
    "export-verify-without-pts": Case("fan-export", export_with("--target", "onnx", "--verify", "@nopts"),
                                      "no images with .pts annotations found"),
    "export-verify-missing": Case("fan-export", export_with("--target", "onnx", "--verify", "@missing"), "not a folder"),
    "bench-data-empty": Case("fan-bench", bench_on("--data", "@empty"), "no images with .pts annotations found"),
    "bench-data-without-pts": Case("fan-bench", bench_on("--data", "@nopts"), "no images with .pts annotations found"),
    "bench-data-missing": Case("fan-bench", bench_on("--data", "@missing"), "not a folder"),
    "bench-calib-missing": Case("fan-bench", bench_on("--calib", "@missing"), "not a folder"),
    "bench-artifact-missing": Case("fan-bench", lambda e: ["--artifact", str(e.root / "gone.onnx")], "gone.onnx: no such file"),
}
# .pts files: every kind of bad annotation, through training, evaluation, calibration and verification.
_PTS_MESSAGES = {
    "pts-67-points": "67 points, expected 68",
    "pts-header-disagrees": "header says 68 points, file has 69",
    "pts-garbage": "point line 1 has 8 values, expected 2",
    "pts-no-closing-brace": "no closing '}'",
    "pts-no-opening-brace": "header without an opening '{'",
    "pts-nan": "point line 68 is not finite",
    "pts-binary": "not a text file",
}
for _name, _message in _PTS_MESSAGES.items():
    CASES[f"train-{_name}"] = Case("fan-train", train_on(_name), f"face0.pts: {_message}")
    CASES[f"eval-{_name}"] = Case("fan-edge", eval_on(_name), f"face0.pts: {_message}")
# images in data folders: found when the folder is read, before any model work (and never decoded when too large)
_IMAGE_MESSAGES = {"img-not-an-image": "face0.jpg: not a readable image", "img-empty": "face0.jpg: empty file",
                   "img-20000x20000": "face0.png: 20000x20000 is larger than 200,000,000 pixels"}
for _name, _message in _IMAGE_MESSAGES.items():
    CASES[f"train-{_name}"] = Case("fan-train", train_on(_name), _message)
    CASES[f"eval-{_name}"] = Case("fan-edge", eval_on(_name), _message)
    CASES[f"bench-data-{_name}"] = Case("fan-bench", bench_on("--data", f"@{_name}"), _message)
for _name in ("pts-garbage", "pts-nan"):
    CASES[f"export-calib-{_name}"] = Case("fan-export",
                                          export_with("--target", "onnx", "--precision", "int8", "--calib", f"@{_name}"),
                                          f"face0.pts: {_PTS_MESSAGES[_name]}")
    CASES[f"export-verify-{_name}"] = Case("fan-export", export_with("--target", "onnx", "--verify", f"@{_name}"),
                                           f"face0.pts: {_PTS_MESSAGES[_name]}")
    CASES[f"bench-data-{_name}"] = Case("fan-bench", bench_on("--data", f"@{_name}"), f"face0.pts: {_PTS_MESSAGES[_name]}")


@pytest.mark.parametrize("case_id", list(CASES))
def test_cli(case_id: str, env: SimpleNamespace, capfd, caplog) -> None:
    case = CASES[case_id]
    try:
        code = MAIN[case.prog](case.argv(env))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capfd.readouterr()
    if case.error is None:
        assert code == 0 and case.stdout in out, (code, out, err)
        if case.warning is None:
            assert err == "" and not caplog.records, (err, caplog.text)
        else:  # logged (pytest holds the record; a real process prints it as one line: test_damaged_jpeg_warns_in_one_line)
            assert err == "" and case.warning in caplog.text, (err, caplog.text)
        return
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and err.endswith("\n"), err
    prefix = rf"{re.escape(case.prog)}( [a-z]+)?: error: "  # argparse's own errors name the subcommand: "fan-edge predict"
    assert re.match(prefix, lines[0]) and case.error in lines[0], lines[0]
    assert "Traceback" not in err and out == "", out


def test_the_table_covers_every_entry_point() -> None:
    assert {c.prog for c in CASES.values()} == set(MAIN)
    assert sum(c.error is None for c in CASES.values()) >= 6


# ---- the real process ----------------------------------------------------------------------------------------------


def _run_cli(*argv: str) -> tuple[int, str, int]:
    """Exit code, stderr and peak RSS (MiB) of ``python -m fan_edge.cli ARGV`` in a fresh process."""
    proc = subprocess.Popen([sys.executable, "-m", "fan_edge.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err, usage.ru_maxrss // 1024


def test_huge_photo_is_refused_without_decoding_it(env: SimpleNamespace, monkeypatch, capfd) -> None:
    """1.2 GB of pixels behind a 1.7 MB file: the header says 20000x20000 and the decoder is never called.

    (Checked by the decoder being off limits rather than by peak memory: a forked child's RSS starts as the
    parent's, so a memory figure here would measure pytest; memory figures live in the benchmark.)"""
    import cv2

    def no_decoding(*args, **kwargs):
        raise AssertionError("the 20000x20000 photo was handed to the decoder")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)  # fan_edge.files.images imports cv2 where it decodes
    monkeypatch.setattr(cv2, "imread", no_decoding)
    code = MAIN["fan-edge"](["predict", str(env.img / "huge.png"), "--model", str(env.onnx), "--boxes", BOX])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("fan-edge: error: ") and "20000x20000" in err, err


def test_damaged_jpeg_warns_in_one_line(env: SimpleNamespace) -> None:
    code, err, _ = _run_cli("predict", str(env.img / "bitrot.jpg"), "--model", str(env.onnx), "--boxes", BOX)
    assert code == 0 and err.count("\n") == 1 and "bitrot.jpg: decoded with errors: Corrupt JPEG data" in err, err


def test_debug_shows_the_traceback(env: SimpleNamespace) -> None:
    code, err, _ = _run_cli("--debug", "predict", str(env.img / "empty.jpg"), "--model", str(env.onnx))
    assert code == 1 and "Traceback (most recent call last)" in err and "fan_edge.errors.DataError" in err and "empty file" in err


# ---- the API: typed errors -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session(env: SimpleNamespace):
    from fan_edge.runtime import LandmarkSession

    with LandmarkSession(env.onnx) as s:
        yield s


PHOTO = _photo()
API_BOXES = {
    "zero-width": ([[40, 20, 40, 140]], "degenerate"),
    "zero-height": ([[20, 50, 130, 50]], "degenerate"),
    "outside": ([[-500, -500, -400, -380]], "outside"),
    "nan": ([[np.nan, 20, 130, 140]], "not finite"),
    "inf": ([[20, 20, 130, np.inf]], "not finite"),
    "shape-2x5": (np.ones((2, 5)), "must be (N, 4)"),
    "shape-1x1x4": (np.ones((1, 1, 4)), "must be (N, 4)"),
    "strings": ([["a", "b", "c", "d"]], "must be numbers"),
    "ragged": ([[1, 2, 3, 4], [1, 2]], "must be numbers"),
}


@pytest.mark.parametrize("name", list(API_BOXES))
def test_api_bad_boxes(name: str, session) -> None:
    from fan_edge.runtime.detect import detect_and_predict

    boxes, message = API_BOXES[name]
    for call in (lambda: session.predict(PHOTO, boxes), lambda: session.crops(PHOTO, boxes),
                 lambda: detect_and_predict(session, PHOTO, boxes=boxes, refine_passes=1)):
        with pytest.raises(DataError, match=re.escape(message)) as excinfo:
            call()
        assert "\n" not in str(excinfo.value)


API_IMAGES = {
    "empty-array": (np.zeros((0, 0, 3), np.uint8), "empty image"),
    "one-dimensional": (np.zeros(10, np.uint8), "expected an"),
    "two-channels": (np.zeros((10, 10, 2), np.uint8), "expected an"),
    "int32": (np.zeros((10, 10, 3), np.int32), "unsupported image dtype int32"),
    "a-path": ("photo.jpg", "expected an image array"),
    "none": (None, "expected an image array"),
}


@pytest.mark.parametrize("name", list(API_IMAGES))
def test_api_bad_image_arrays(name: str, session) -> None:
    image, message = API_IMAGES[name]
    with pytest.raises(DataError, match=message):
        session.predict(image, [[1, 1, 5, 5]])


@pytest.mark.parametrize("name", ["grey", "rgba", "deep16", "grey16", "tiny1x1"])
def test_api_images_that_must_work(name: str, env: SimpleNamespace, session) -> None:
    """Every depth and layout the file decodes to goes to the session as it is, and agrees with the RGB photo."""
    from fan_edge.files.images import read_image

    image = read_image(env.img / f"{name}.png")
    box = [[-1, -1, 1, 1]] if name == "tiny1x1" else [[20, 20, 130, 140]]
    points, scores = session.predict(image, box)
    assert points.shape == (1, 68, 2) and np.isfinite(points).all() and np.isfinite(scores).all()
    if name in ("rgba", "deep16"):
        reference, _ = session.predict(read_image(env.img / "photo.png"), box)
        np.testing.assert_allclose(points, reference, atol=1e-3)


@pytest.mark.parametrize("name", ["empty.jpg", "notes.jpg", "random.jpg", "cut.png", "crc.png", "cut.jpg", "int32.tif",
                                  "huge.png", "nope.png", "a-folder.png"])
def test_api_bad_image_files(name: str, env: SimpleNamespace, capfd) -> None:
    from fan_edge.files.images import check_image_file, load_image, read_image

    for read in (read_image, load_image, check_image_file):
        if read is check_image_file and name in ("cut.png", "crc.png", "cut.jpg", "int32.tif"):
            continue  # the header is sound: only decoding finds the damage or the depth
        with pytest.raises(DataError) as excinfo:
            read(env.img / name)
        assert str(excinfo.value).startswith(str(env.img / name)) and "\n" not in str(excinfo.value)
    assert capfd.readouterr().err == ""  # what the codecs print went into the message


@pytest.mark.parametrize("name", list(BAD_PTS))
def test_api_bad_pts_folder_fails_before_any_face_is_loaded(name: str, env: SimpleNamespace) -> None:
    from fan_edge.data import FaceFolder

    with pytest.raises(DataError, match=re.escape(_PTS_MESSAGES[name])) as excinfo:
        FaceFolder(env.folders[name], 64)
    assert "face0.pts" in str(excinfo.value)


def test_api_pts_that_is_a_folder(tmp_path: Path) -> None:
    from fan_edge.files.pts import read_pts

    (tmp_path / "face.pts").mkdir()
    with pytest.raises(DataError, match="cannot read"):
        read_pts(tmp_path / "face.pts")


def test_api_names(env: SimpleNamespace) -> None:
    from fan_edge.export import export_model
    from fan_edge.models import create_model
    from fan_edge.runtime import LandmarkSession

    with pytest.raises(ExportError, match="unknown target 'foo'"):
        export_model(str(env.ckpt), "foo", verify=False)
    with pytest.raises(ExportError, match="unknown precision 'int4'"):
        export_model(str(env.ckpt), "onnx", "int4", verify=False)
    with pytest.raises(ConfigError, match="nosuch"):
        create_model("nosuch")
    with pytest.raises(BackendError, match="tpu"):
        LandmarkSession(env.onnx, device="tpu")
    with pytest.raises(BackendError, match="nosuch"):
        LandmarkSession(env.onnx, backend="nosuch")


@pytest.mark.parametrize("name", ["fan4-w32-i128", "fan1-w64-i128"])
def test_api_checkpoint_of_another_architecture(name: str, env: SimpleNamespace) -> None:
    from fan_edge.models import create_model

    with pytest.raises(CheckpointError, match="does not fit the model") as excinfo:
        create_model(name, weights=str(env.ckpt))  # a fan1-w32 checkpoint
    assert "\n" not in str(excinfo.value)


_WORKER_SCRIPT = """
import torch
from fan_edge.cli.common import one_line
from fan_edge.errors import DataError, FanEdgeError

class Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise DataError("face0.png: not a readable image")

try:
    next(iter(torch.utils.data.DataLoader(Broken(), num_workers=1)))
except FanEdgeError as exc:
    assert "Traceback" in str(exc), str(exc)
    print(one_line(exc))
"""


def test_worker_wrapped_errors_print_their_own_line() -> None:
    """A DataLoader worker re-raises a DataError with its whole traceback in the message; the CLI prints the last line.

    In its own process: a DataLoader with workers installs torch's SIGCHLD handler in the process that made it,
    and later subprocesses of the test session (the benchmark's) then crash it."""
    done = subprocess.run([sys.executable, "-c", _WORKER_SCRIPT], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "face0.png: not a readable image"


# ---- the crop of a huge window: memory bounded by the crop, values as before ----------------------------------------


def _whole_float_box_reduce(region: np.ndarray, halvings: int) -> np.ndarray:
    """The warp's former halving path: the whole window converted to float32, then halved."""
    from fan_edge.runtime.crop import _halve

    out = region.astype(np.float32)
    for _ in range(halvings):
        out = _halve(out)
    return out


@pytest.mark.parametrize("tile_bytes", [1, 5000, 8 << 20])
def test_tiled_box_reduce_is_bit_identical(tile_bytes: int, monkeypatch) -> None:
    from fan_edge.runtime import crop

    monkeypatch.setattr(crop, "TILE_BYTES", tile_bytes)
    rng = np.random.default_rng(tile_bytes)
    for _ in range(30):
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        dtype = (np.uint8, np.uint16, np.float32)[int(rng.integers(3))]
        region = (rng.random((h, w, int(rng.choice([1, 3])))) * 255 * (257 if dtype == np.uint16 else 1)).astype(dtype)
        halvings = crop._halvings(float(rng.uniform(0.5, 400)), h, w)
        np.testing.assert_array_equal(crop._box_reduce(region, halvings), _whole_float_box_reduce(region, halvings))


def test_warp_of_a_whole_big_photo_allocates_about_one_tile() -> None:
    """A box over a 4000x4000 RGB photo: the former warp allocated 4 bytes per source value (192 MB), now a tile."""
    import tracemalloc

    from fan_edge.runtime.crop import TILE_BYTES, CropSpec, crop_matrix, warp_image

    image = np.full((4000, 4000, 3), 100, np.uint8)
    image[::3, ::5] = 200
    m = crop_matrix(np.array([0.0, 0.0, 3999.0, 3999.0]), 128, CropSpec())
    tracemalloc.start()
    try:
        crop = warp_image(image, m, 128)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * TILE_BYTES + (8 << 20), f"{peak / 2**20:.0f} MiB"
    inside = crop[50:80, 50:80]  # the photo fills the crop's middle (about 33..95): the mean of its pattern
    np.testing.assert_allclose(inside, 100 + 100 * (1 / 3) * (1 / 5), atol=1.5)
