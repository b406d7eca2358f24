"""The web page (web/): onnxruntime-web in headless Chromium gives the Python runtime's landmarks.

Two levels:

- the page's JavaScript ports of the crop and decoding (web/js/crop.js, web/js/decode.js) run under Node on
  the inputs of fan_edge.runtime's functions and must give the same bits (the crop and the network input) or
  the same numbers to float64 rounding (decoded points);
- the page itself, driven by puppeteer-core in the system's Chromium (web/test/drive.mjs) on WASM, runs the
  bundled default exported to ONNX (heatmaps, and landmarks decoded in the graph) on real AFW photos with
  boxes from their ground-truth landmarks; its points must match ``LandmarkSession.predict`` within 0.5 px.

Needs node, web/node_modules (``npm ci --prefix web``) and Chromium (/usr/bin/chromium, or
$FAN_EDGE_CHROMIUM). Without them the tests skip, saying what is missing, unless FAN_EDGE_REQUIRE_BROWSER=1
(CI, see .ci/run), where they fail.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fan_edge.runtime.crop import CropSpec, crop_matrices, warp_image
from fan_edge.runtime.decode import crop_points_to_image, decode_heatmaps
from fan_edge.runtime.image import to_network_input

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
MAX_PX = 0.5  # page vs Python runtime, image pixels, any point
PHOTOS = 4


def _missing(what: str) -> None:
    reason = f"{what}; the web page tests need it"
    if os.environ.get("FAN_EDGE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (FAN_EDGE_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(f"{reason}; set FAN_EDGE_REQUIRE_BROWSER=1 to make this a failure")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        _missing("node (Node.js) is not installed")
    return node


def _node_modules() -> None:
    for package in ("onnxruntime-web", "puppeteer-core"):
        if not (WEB / "node_modules" / package / "package.json").is_file():
            _missing(f"web/node_modules/{package} is absent (run `npm ci --prefix web`)")


def _chromium() -> str:
    named = os.environ.get("FAN_EDGE_CHROMIUM")
    candidates = [named] if named else ["/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"]
    for c in candidates:
        path = shutil.which(c) if c else None
        if path:
            return path
    _missing(f"Chromium is not installed ({named or '/usr/bin/chromium'}; `apt-get install chromium`, or set FAN_EDGE_CHROMIUM)")
    raise AssertionError  # not reached


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def _unb64(text: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


# ---- the ports under Node --------------------------------------------------------------------------------


def _peaked_heatmaps(rng: np.random.Generator, n: int, k: int, size: int) -> np.ndarray:
    """Noise plus a Gaussian per map, peaks anywhere (edges included), and the degenerate maps decoding guards."""
    yy, xx = np.mgrid[0:size, 0:size]
    hm = rng.normal(0.0, 0.03, (n, k, size, size)).astype(np.float32)
    for i in range(n):
        for j in range(k):
            cx, cy = rng.uniform(-1.0, size), rng.uniform(-1.0, size)
            hm[i, j] += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * rng.uniform(0.7, 2.0) ** 2)).astype(np.float32)
    hm[0, 0] = 0.0  # flat: argmax 0, no step
    hm[0, 1] = -1.0  # not positive
    hm[0, 2, 5, 5] = hm[0, 2, 5, 6] = 5.0  # a tie: the first maximum wins
    hm[0, 3, 0, :] = 3.0  # peak on the border row
    hm[0, 4, 7, 9] = 1e-12  # a positive peak below the eps of the log fit, on zeros
    hm[0, 4][hm[0, 4] != np.float32(1e-12)] = 0.0
    return hm


def test_crop_and_decode_ports_match_python(tmp_path):
    """web/js/crop.js and decode.js against fan_edge.runtime.crop / image / decode, on the same inputs."""
    node = _node()
    rng = np.random.default_rng(16)
    h, w = 1000, 1300  # large enough that the biggest window is converted in several strips (TILE_BYTES)
    gradient = (np.add.outer(np.arange(h), 2 * np.arange(w)) % 256).astype(np.uint8)
    image = np.clip(np.stack([gradient, 255 - gradient, gradient // 2], axis=-1) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
    spec = CropSpec(reference_scale=280.0, center_shift=0.07)
    size = 128
    boxes = [
        [120.3, 80.9, 250.2, 230.6],  # a face-sized box
        [-30.5, -20.0, 40.0, 60.25],  # partly outside: zero padding
        [20.0, 10.0, 400.0, 295.0],  # a window of 3.5 crop pixels per image pixel: the halving path
        [-200.0, -150.0, 900.0, 700.0],  # 12x: several halvings, most of the window outside
        [10.3, 12.7, 10.9, 13.2],  # a sub-pixel box: magnification
        [-100.0, -80.0, 1250.0, 950.0],  # most of the photo: a 15 MB float region, halved in strips
    ]
    matrices = crop_matrices(np.array(boxes), size, spec)
    inputs = to_network_input(np.stack([warp_image(image, m, size) for m in matrices]))
    heatmaps = _peaked_heatmaps(rng, 2, 68, 32)
    case = {
        "image": {"width": w, "height": h, "channels": 3, "data": _b64(image)},
        "boxes": boxes,
        "input_size": size,
        "crop": spec.to_dict(),
        "layout": "NCHW",
        "value_range": [0.0, 1.0],
        "heatmaps": [{"dims": list(heatmaps.shape), "data": _b64(heatmaps), "refine": r, "input_size": size} for r in ("quarter", "gaussian")],
    }
    (tmp_path / "case.json").write_text(json.dumps(case))
    subprocess.run([node, str(WEB / "test" / "port-check.mjs"), str(tmp_path / "case.json"), str(tmp_path / "out.json")],
                   check=True, timeout=60)
    out = json.loads((tmp_path / "out.json").read_text())

    np.testing.assert_allclose(np.array(out["matrices"]), matrices, rtol=0, atol=1e-12)
    for i, b in enumerate(out["inputs"]):
        js = _unb64(b, np.float32).reshape(3, size, size)
        assert np.array_equal(js, inputs[i]), f"box {i}: network input differs in {(js != inputs[i]).sum()} values"
    for refine, decoded in zip(("quarter", "gaussian"), out["decoded"]):
        points, scores = decode_heatmaps(heatmaps, size, refine)
        js_points = _unb64(decoded["points"], np.float64).reshape(points.shape)
        np.testing.assert_allclose(js_points, points, rtol=0, atol=1e-9, err_msg=refine)
        assert np.array_equal(_unb64(decoded["scores"], np.float32).reshape(scores.shape), scores)
        image_points = crop_points_to_image(points, np.repeat(matrices[:1], len(points), axis=0))
        np.testing.assert_allclose(_unb64(decoded["image_points"], np.float64).reshape(points.shape), image_points, rtol=0, atol=1e-9)


# ---- the page in headless Chromium -----------------------------------------------------------------------


def _export(tmp: Path) -> dict[str, Path]:
    """The bundled default as ONNX fp32, heatmaps and in-graph landmarks: two processes at once (most of an
    export is torch.export on one core)."""
    code = ("import sys; from fan_edge.export import export_model; "
            "export_model('default', target='onnx', precision='fp32', outputs=sys.argv[1], output=sys.argv[2], verify=False)")
    paths = {kind: tmp / f"default-{kind}.onnx" for kind in ("heatmaps", "landmarks")}
    procs = {kind: subprocess.Popen([sys.executable, "-c", code, kind, str(p)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for kind, p in paths.items()}
    for kind, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"export of the default ({kind}) failed:\n{out[-3000:]}"
    return paths


def _strip_contract(src: Path, dst: Path) -> None:
    """A copy of ``src`` without the contract in its metadata (only the sidecar has it)."""
    import onnx

    from fan_edge.runtime.contract import METADATA_KEY

    model = onnx.load(str(src))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(dst))
    shutil.copyfile(str(src) + ".json", str(dst) + ".json")


def _serve_module():
    spec = importlib.util.spec_from_file_location("fan_edge_web_serve", WEB / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def page_run(tmp_path_factory, data_dir):
    """One Chromium session: the heatmaps artifact (loaded by URL, first photo by URL too), then the landmarks
    artifact, then a copy without the embedded contract; each on the same photos. Returns what the page gave and
    the Python runtime's answers."""
    import cv2

    from fan_edge.files.images import read_image
    from fan_edge.files.folders import landmark_boxes
    from fan_edge.files.pts import read_pts
    from fan_edge.runtime.session import LandmarkSession

    node, chromium = _node(), _chromium()
    _node_modules()
    tmp = tmp_path_factory.mktemp("web")
    photos = sorted((data_dir / "afw").glob("*.jpg"))
    assert len(photos) >= PHOTOS, f"expected at least {PHOTOS} AFW photos in {data_dir / 'afw'}"
    photos = [photos[i] for i in np.linspace(0, len(photos) - 1, PHOTOS).round().astype(int)]
    models = _export(tmp)
    _strip_contract(models["heatmaps"], tmp / "default-sidecar-only.onnx")
    models["sidecar"] = tmp / "default-sidecar-only.onnx"

    # The page gets the pixels OpenCV decoded (as PNG): both sides then crop the same image, whatever the two
    # JPEG decoders do (the JPEG itself is run too, and compared separately).
    images, boxes = {}, {}
    for p in photos:
        images[p.stem] = read_image(p)
        boxes[p.stem] = landmark_boxes(read_pts(p.with_suffix(".pts"))[None]).tolist()
        rgb = images[p.stem]
        cv2.imwrite(str(tmp / f"{p.stem}.png"), rgb[..., ::-1] if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb)
    shutil.copyfile(photos[0], tmp / "jpeg.jpg")

    jobs, plan = [], []
    for kind in ("heatmaps", "landmarks", "sidecar"):
        for i, p in enumerate(photos if kind != "sidecar" else photos[:1]):
            job = {"image": f"models/{p.stem}.png", "boxes": boxes[p.stem], "repeat": 0}
            if i == 0 and kind != "heatmaps":
                job["model"] = f"models/{models[kind].name}"
            jobs.append(job)
            plan.append((kind, p.stem))
    jobs.append({"image": "models/jpeg.jpg", "boxes": boxes[photos[0].stem], "model": f"models/{models['heatmaps'].name}"})
    plan.append(("jpeg", photos[0].stem))

    first = jobs[0]
    box = ";".join(",".join(repr(v) for v in b) for b in first["boxes"])
    query = f"model=models/{models['heatmaps'].name}&ep=wasm&image={first['image']}&box={box}"
    out = _drive(node, chromium, tmp, query, jobs)

    sessions = {kind: LandmarkSession(path, backend="onnxruntime", device="cpu") for kind, path in models.items()}
    expected = {}
    for kind, stem in plan:
        session = sessions["heatmaps" if kind == "jpeg" else kind]
        expected[(kind, stem)] = session.predict(images[stem], np.array(boxes[stem]))
    return {"plan": plan, "results": out["results"], "expected": expected, "console": out["console"], "model": out["model"],
            "tmp": tmp, "node": node, "chromium": chromium, "models": models, "images": images, "boxes": boxes, "sessions": sessions}


def _drive(node: str, chromium: str, folder: Path, query: str, jobs: list[dict], webgpu: bool = False) -> dict:
    """Serve web/ (and ``folder`` at /models/) with web/serve.py, open ``/?query`` in Chromium, run ``jobs``."""
    (folder / "jobs.json").write_text(json.dumps(jobs))
    server, base = _serve_module().serve_in_thread(port=0, models=folder, quiet=True)
    try:
        args = [node, str(WEB / "test" / "drive.mjs"), "--browser", chromium, "--page", f"{base}?{query}",
                "--jobs", str(folder / "jobs.json"), "--out", str(folder / "out.json"), "--timeout", "240000"]
        proc = subprocess.run(args + (["--webgpu"] if webgpu else []), capture_output=True, text=True, timeout=400)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, f"the page run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads((folder / "out.json").read_text())


def _compare(page_run, kind: str) -> list[float]:
    errors = []
    for (k, stem), result in zip(page_run["plan"], page_run["results"]):
        if k != kind:
            continue
        points, scores = page_run["expected"][(k, stem)]
        faces = result["faces"]
        assert len(faces) == len(points), f"{stem}: {len(faces)} faces on the page, {len(points)} in Python"
        js = np.array([f["points"] for f in faces])
        js_scores = np.array([f["scores"] for f in faces])
        err = float(np.abs(js - points).max())
        assert err <= MAX_PX, f"{kind} {stem}: the page's landmarks are {err:.3f} px from the Python runtime's (limit {MAX_PX})"
        np.testing.assert_allclose(js_scores, scores, rtol=0, atol=1e-3, err_msg=f"{kind} {stem} scores")
        assert result["provider"] == "wasm"
        for f in faces:
            assert all(np.isfinite(v) and v >= 0 for v in f["ms"].values()) and f["ms"]["total"] >= f["ms"]["run"]
        errors.append(err)
    assert errors, f"no {kind} results"
    return errors


@pytest.mark.data
def test_page_heatmaps_match_python_runtime(page_run):
    errors = _compare(page_run, "heatmaps")
    assert len(errors) == PHOTOS
    first = page_run["results"][0]
    assert first["contractSource"].startswith('ONNX metadata_props["fan_edge.contract"]'), first["contractSource"]
    assert "refine gaussian" in page_run["model"] and "Running on WASM" in page_run["model"], page_run["model"]
    errors_logged = [m for m in page_run["console"] if m.startswith(("pageerror", "error"))]
    assert not errors_logged, f"the page logged errors: {errors_logged[:5]}"


@pytest.mark.data
def test_page_in_graph_landmarks_match_python_runtime(page_run):
    assert len(_compare(page_run, "landmarks")) == PHOTOS


@pytest.mark.data
def test_page_reads_the_sidecar_when_the_artifact_has_no_contract(page_run):
    _compare(page_run, "sidecar")
    result = next(r for (kind, _), r in zip(page_run["plan"], page_run["results"]) if kind == "sidecar")
    assert result["contractSource"] == "sidecar default-sidecar-only.onnx.json", result["contractSource"]


@pytest.mark.data
def test_page_on_the_jpeg_itself(page_run):
    """Chromium's JPEG decoder for the page, OpenCV's for Python: the points still agree."""
    _compare(page_run, "jpeg")


@pytest.mark.data
@pytest.mark.skipif(os.environ.get("FAN_EDGE_WEB_WEBGPU") != "1",
                    reason="WebGPU in headless Chromium without a GPU runs on SwiftShader at seconds a face; FAN_EDGE_WEB_WEBGPU=1 runs it")
def test_page_on_webgpu_matches_python_runtime(page_run):
    """The WebGPU execution provider (on SwiftShader's Vulkan where the machine has no GPU): same points."""
    stem = next(iter(page_run["images"]))
    boxes = page_run["boxes"][stem]
    jobs = [{"image": f"models/{stem}.png", "boxes": boxes}]
    out = _drive(page_run["node"], page_run["chromium"], page_run["tmp"],
                 f"model=models/{page_run['models']['heatmaps'].name}&ep=webgpu", jobs, webgpu=True)
    result = out["results"][0]
    assert result["provider"] == "webgpu", f"Chromium gave no WebGPU adapter: {out['model']}"
    points, scores = page_run["sessions"]["heatmaps"].predict(page_run["images"][stem], np.array(boxes))
    err = float(np.abs(np.array([f["points"] for f in result["faces"]]) - points).max())
    assert err <= MAX_PX, f"WebGPU: the page's landmarks are {err:.3f} px from the Python runtime's (limit {MAX_PX})"
