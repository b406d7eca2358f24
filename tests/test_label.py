"""``fan-edge label``: teachers' consensus and quality figures, the job's files, resuming, refusals, real photos."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fan_edge.cli import main
from fan_edge.files.pts import read_pts
from fan_edge.label import (
    LABELS,
    LabelSpec,
    Ledger,
    Thresholds,
    consensus,
    disagreement,
    drop_reasons,
    flip_nme,
    label_folder,
    landmark_box_to_dlib,
    output_names,
    place_image,
    teacher_nme,
)
from fan_edge.label import LabelSummary, summarize
from fan_edge.label.job import ImageResult, judge_image
from fan_edge.label.teachers import _unflip
from fan_edge.runtime.detect import HOG_TO_LANDMARK_BOX, _box_to_landmark_box
from fan_edge.runtime.scheme import LEFT_EYE_OUTER, RIGHT_EYE_OUTER, mirror_permutation

# ---- constructed points ---------------------------------------------------------------------------------------


def _face(io: float = 50.0) -> np.ndarray:
    """68 points whose outer eye corners are ``io`` pixels apart."""
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 100, (68, 2))
    pts[LEFT_EYE_OUTER] = (25.0, 40.0)
    pts[RIGHT_EYE_OUTER] = (25.0 + io, 40.0)
    return pts


def test_consensus_and_disagreement_on_constructed_points() -> None:
    """Three teachers shifted 0, 1 and 10 px right of one face (inter-ocular 50 px): the median is the middle one."""
    base = _face(50.0)
    shift = np.array([1.0, 0.0])
    teachers = np.stack([base, base + shift, base + 10 * shift])[:, None]  # (T=3, N=1, K, 2)
    median = consensus(teachers, "median")
    np.testing.assert_allclose(median[0], base + shift)
    np.testing.assert_allclose(consensus(teachers, "mean")[0], base + 11 / 3 * shift)
    # Each teacher's NME io (%) against the consensus: 1 px / 50 px = 2 %, 0, 9 px = 18 %; the io of the consensus.
    np.testing.assert_allclose(teacher_nme(teachers, median)[:, 0], [2.0, 0.0, 18.0])
    np.testing.assert_allclose(disagreement(teachers, median), [20.0 / 3])
    np.testing.assert_allclose(disagreement(teachers[:1], consensus(teachers[:1])), [0.0])  # one teacher cannot disagree
    # Flip: the mirrored pass 2.5 px off everywhere = 5 % of 50 px.
    np.testing.assert_allclose(flip_nme(base[None], base[None] + [0.0, 2.5]), [5.0])
    with pytest.raises(Exception, match="unknown consensus rule"):
        consensus(teachers, "mode")


def test_drop_reasons_and_thresholds() -> None:
    t = Thresholds(max_disagreement=5.0, max_flip=4.0, min_detector_score=0.2)
    assert drop_reasons(t, 4.9, 3.9, 0.3) == []
    assert drop_reasons(t, 5.1, 4.1, 0.1) == ["detector_score", "disagreement", "flip"]
    assert drop_reasons(t, float("nan"), None, None) == ["disagreement"]  # not measured: no flip or score check
    assert drop_reasons(Thresholds(None, None, None), 99.0, 99.0, -5.0) == []
    with pytest.raises(Exception, match="max-flip must be at least 0"):
        Thresholds(max_flip=-1.0)
    with pytest.raises(Exception, match="finite"):
        Thresholds(max_disagreement=float("inf"))


def test_judge_and_summary_count_kept_and_dropped() -> None:
    """Three faces of one image: one kept, one off on disagreement, one on flip; the summary counts them by reason."""
    base = np.stack([_face(50.0)] * 3)  # (N=3, K, 2)
    a, b = base.copy(), base.copy()
    b[1] += (8.0, 0.0)  # teachers 8 px apart on face 1: each 4 px = 8 % from their consensus
    points = np.stack([a, b])
    flipped = points.copy()
    flipped[:, 2] += (0.0, 5.0)  # face 2's mirrored pass 5 px = 10 % off
    spec = LabelSpec(Path("in"), Path("out"), ("t1", "t2"), all_faces=True, thresholds=Thresholds(5.0, 4.0, 0.5))
    result = ImageResult("p.jpg", np.tile([10.0, 10.0, 90.0, 90.0], (3, 1)), np.array([1.0, 0.9, 0.8]), points, flipped)
    records, labels = judge_image(result, spec)
    assert [r["kept"] for r in records] == [True, False, False]
    assert [r["reasons"] for r in records] == [[], ["disagreement"], ["flip"]]
    assert records[1]["teachers"] == {"t1": 8.0, "t2": 8.0} and records[1]["disagreement"] == 8.0
    assert records[2]["flip"] == 10.0 and records[2]["flip_by_teacher"] == {"t1": 10.0, "t2": 10.0}
    np.testing.assert_allclose(labels[1], base[1] + (4.0, 0.0))
    nothing, _ = judge_image(ImageResult("q.jpg"), spec)
    assert nothing == [{"image": "q.jpg", "face": None, "faces": 0, "kept": False, "reason": "no_face"}]
    summary = summarize(LabelSummary(Path("out")), {"p.jpg": records, "q.jpg": nothing}, ["p.jpg", "q.jpg"], teachers=2)
    assert (summary.images, summary.faces, summary.kept, summary.dropped, summary.no_face) == (2, 3, 1, 2, 1)
    assert summary.dropped_by == {"detector_score": 0, "disagreement": 1, "flip": 1}
    assert summary.disagreement["max"] == 8.0
    text = summary.format()
    assert "3 faces found, 1 kept, 2 dropped (disagreement 1, flip 1), 1 with no face" in text


def test_mirror_and_dlib_box_conventions() -> None:
    """Unflipping twice is the identity; a mirrored face's points come back relabelled; dlib boxes round-trip."""
    pts = _face(50.0)
    np.testing.assert_allclose(_unflip(_unflip(pts, 120), 120), pts)
    mirrored = pts.copy()
    mirrored[:, 0] = 119.0 - mirrored[:, 0]
    mirrored = mirrored[mirror_permutation()]  # what a perfect model predicts on the mirrored image
    np.testing.assert_allclose(_unflip(mirrored, 120), pts)
    raw = np.array([[10.0, 20.0, 90.0, 100.0], [-3.5, 4.25, 50.0, 61.0]])
    np.testing.assert_allclose(landmark_box_to_dlib(_box_to_landmark_box(raw, HOG_TO_LANDMARK_BOX)), raw)


def test_output_names() -> None:
    assert output_names("a/b/photo.jpg", 0, False) == ("a/b/photo.jpg", "a/b/photo.pts")
    assert output_names("a/photo.png", 1, True) == ("a/photo_2.png", "a/photo_2.pts")


def test_ledger_drops_a_partial_line_and_an_incomplete_image(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / LABELS)
    ledger.append([{"image": "a.jpg", "face": 0, "faces": 1}])
    ledger.append([{"image": "b.jpg", "face": 0, "faces": 2}])  # its second face never recorded: a kill in between
    ledger.close()
    with open(ledger.path, "a") as fh:
        fh.write('{"image": "c.jpg", "fa')  # a kill in the middle of a write
    assert list(ledger.read()) == ["a.jpg"]
    assert ledger.path.read_text() == '{"image": "a.jpg", "face": 0, "faces": 1}\n'
    ledger.path.write_text("not json\n")
    with pytest.raises(Exception, match="line 1 is not JSON"):
        ledger.read()


def test_place_image_links_or_copies(tmp_path: Path) -> None:
    src = tmp_path / "src.jpg"
    src.write_bytes(b"pixels")
    assert place_image(src, tmp_path / "o" / "a.jpg", copy=False) == "link"
    assert os.path.samefile(src, tmp_path / "o" / "a.jpg")
    assert place_image(src, tmp_path / "o" / "a.jpg", copy=False) == "link"  # again: already there
    assert place_image(src, tmp_path / "o" / "b.jpg", copy=True) == "copy"
    assert not os.path.samefile(src, tmp_path / "o" / "b.jpg") and (tmp_path / "o" / "b.jpg").read_bytes() == b"pixels"


# ---- dlib's predictor: a tiny one trained here, that always answers its mean shape ----------------------------


@pytest.fixture(scope="module")
def mean_shape_predictor(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 68-point dlib shape predictor trained (in milliseconds) on faces that all have one mirror-symmetric shape in
    their box: it answers that shape, placed as dlib places it (corner pixel ``left + u * (right - left)``). Boxes of
    1000 px make the training labels' rounding to whole pixels negligible."""
    dlib = pytest.importorskip("dlib")
    from fan_edge.runtime.scheme import MIRROR_PAIRS

    rng = np.random.default_rng(0)
    u = np.column_stack([np.full(68, 0.5), rng.uniform(0.1, 0.9, 68)])
    for a, b in MIRROR_PAIRS:
        d, v = rng.uniform(0.05, 0.45), rng.uniform(0.1, 0.9)
        u[a], u[b] = (0.5 - d, v), (0.5 + d, v)
    images, objects = [], []
    for _ in range(4):
        left, top, side = int(rng.integers(5, 40)), int(rng.integers(5, 40)), 1000
        rect = dlib.rectangle(left, top, left + side, top + side)
        parts = [dlib.point(int(round(left + x * side)), int(round(top + y * side))) for x, y in u]
        images.append(rng.integers(0, 256, (1060, 1060), dtype=np.uint8))
        objects.append([dlib.full_object_detection(rect, parts)])
    options = dlib.shape_predictor_training_options()
    options.cascade_depth, options.tree_depth, options.num_trees_per_cascade_level = 1, 1, 1
    options.oversampling_amount, options.feature_pool_size, options.num_test_splits = 1, 4, 1
    path = tmp_path_factory.mktemp("dlib") / "mean_shape_68.dat"
    dlib.train_shape_predictor(images, objects, options).save(str(path))
    return path, u


@pytest.mark.parametrize("face_side", [1, 512])
def test_dlib_teacher_places_points_in_fan_edge_coordinates(mean_shape_predictor, face_side: int) -> None:
    """dlib's answer lands where dlib puts it in the photo, in 0-based pixel centres: whole pixels at scale 1 (up to
    half a pixel off), a fraction of one when the face is enlarged first; the mirrored pass agrees (the shape is
    symmetric). The box goes in as fan-edge's landmark box and is mapped back to dlib's own rectangle."""
    from fan_edge.label import DlibTeacher

    path, u = mean_shape_predictor
    teacher = DlibTeacher(path, face_side=face_side)
    image = np.random.default_rng(1).integers(0, 256, (200, 260, 3), dtype=np.uint8)
    for left, top, right, bottom in [(30, 40, 110, 120), (150.3, 20.8, 231.1, 99.6), (-10, 150, 60, 230)]:
        raw = np.array([[left - 0.5, top - 0.5, right + 0.5, bottom + 0.5]])  # dlib's rectangle as pixel edges
        out = teacher.label(image, _box_to_landmark_box(raw, HOG_TO_LANDMARK_BOX), flip=True)
        expected = np.column_stack([left + u[:, 0] * (right - left), top + u[:, 1] * (bottom - top)])
        # dlib rounds its points, and the rectangle's corners, to whole pixels of the image it sees: half a pixel each
        # (corners of whole pixels need none at scale 1), a fraction of a photo pixel on the enlarged face
        tolerance = (0.5 if float(left).is_integer() else 1.0) if face_side == 1 else 1.0 * 82 / face_side
        tolerance += 0.05  # the mean shape's own rounding in training
        assert np.abs(out.points[0] - expected).max() <= tolerance
        assert np.abs(out.flipped[0] - expected).max() <= tolerance
    with pytest.raises(Exception, match="not a dlib shape predictor"):
        DlibTeacher(Path(__file__))


# ---- the job on synthetic faces (tiny random teachers, boxes given) --------------------------------------------


@pytest.fixture
def job(tmp_path: Path, synthetic_faces: Path, tiny_checkpoint: Path):
    """Six synthetic photos (copied: the job writes beside nothing of the shared fixture), a boxes file naming each."""
    photos = tmp_path / "photos"
    shutil.copytree(synthetic_faces, photos, ignore=shutil.ignore_patterns("*.pts"))
    boxes = {p.name: [[40.0, 40.0, 120.0, 120.0]] for p in sorted(photos.glob("*.png"))}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))

    def spec(**changes) -> LabelSpec:
        base = dict(source=photos, out=tmp_path / "out", teachers=(str(tiny_checkpoint),), boxes=tmp_path / "boxes.json",
                    workers=1, thresholds=Thresholds(None, None, None))
        return LabelSpec(**(base | changes))

    return spec


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LABELS).read_text().splitlines()]


def test_label_writes_pts_links_and_records(job) -> None:
    spec = job()
    summary = label_folder(spec, progress=False)
    assert (summary.images, summary.new_images, summary.faces, summary.kept, summary.linked) == (6, 6, 6, 6, 6)
    records = _records(spec.out)
    assert [r["image"] for r in records] == [f"face{i}.png" for i in range(6)]
    for r in records:
        assert r["kept"] and r["stored"] == "link" and r["box"] == [40.0, 40.0, 120.0, 120.0] and r["detector_score"] is None
        assert read_pts(spec.out / r["pts"]).shape == (68, 2)
        assert os.path.samefile(spec.source / r["image"], spec.out / r["out_image"])
    assert json.loads((spec.out / "label.json").read_text())["teachers"] == list(spec.teachers)
    # --copy: the same labels in files of their own
    copied = job(out=spec.out.parent / "copied", copy=True)
    assert label_folder(copied, progress=False).copied == 6
    assert not os.path.samefile(spec.source / "face0.png", copied.out / "face0.png")
    np.testing.assert_allclose(read_pts(copied.out / "face0.pts"), read_pts(spec.out / "face0.pts"))


def test_resume_after_an_interrupted_run(job) -> None:
    """Stopped after two images (the hook raises, as a kill would stop it); the rerun labels the other four once."""
    spec = job(max_images=5)
    seen = []

    def stop_after_two(records: list[dict]) -> None:
        seen.append(records[0]["image"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label_folder(spec, progress=False, on_image=stop_after_two)
    assert [r["image"] for r in _records(spec.out)] == ["face0.png", "face1.png"]
    summary = label_folder(spec, progress=False)
    assert (summary.images, summary.skipped, summary.new_images) == (5, 2, 3)  # --max-images 5: the first five
    summary = label_folder(job(), progress=False)  # no limit: the sixth
    assert (summary.images, summary.skipped, summary.new_images, summary.faces) == (6, 5, 1, 6)
    images = [r["image"] for r in _records(spec.out)]
    assert sorted(images) == [f"face{i}.png" for i in range(6)] and len(set(images)) == 6
    assert label_folder(job(), progress=False).new_images == 0  # the same command again: nothing to do


def test_thresholds_drop_faces_and_write_no_pts(job) -> None:
    """Two random teachers disagree wildly: every face is dropped for it, no .pts or image is written."""
    spec = job(teachers=(job().teachers[0], "default"), thresholds=Thresholds(5.0, None, None))
    summary = label_folder(spec, progress=False)
    assert (summary.faces, summary.kept, summary.dropped, summary.dropped_by["disagreement"]) == (6, 0, 6, 6)
    assert not list(spec.out.glob("*.pts")) and not list(spec.out.glob("*.png"))
    assert all(r["reason"] == "disagreement" and r["disagreement"] > 5.0 for r in _records(spec.out))


def test_the_default_teacher_is_recorded_by_its_zoo_name(job) -> None:
    """``--teacher default`` labels under the zoo name it stands for: the alias moves when a new default is bundled."""
    from fan_edge.models import DEFAULT_NAME

    spec = job(teachers=("default",), max_images=1)
    label_folder(spec, progress=False)
    assert json.loads((spec.out / "label.json").read_text())["teachers"] == [DEFAULT_NAME] != ["default"]
    assert all(set(r["teachers"]) == {DEFAULT_NAME} for r in _records(spec.out))
    label_folder(job(teachers=(DEFAULT_NAME,), max_images=1), progress=False)  # the same job by its name: resumes


def test_a_fan_and_a_dlib_teacher_together(job, mean_shape_predictor) -> None:
    """A FAN checkpoint and a dlib .dat side by side: both in each record, their consensus in the .pts."""
    spec = job(teachers=(job().teachers[0], str(mean_shape_predictor[0])), max_images=2)
    summary = label_folder(spec, progress=False)
    assert summary.kept == 2
    for r in _records(spec.out):
        assert set(r["teachers"]) == set(spec.teachers) and r["flip_by_teacher"][spec.teachers[1]] < 1.0
        assert read_pts(spec.out / r["pts"]).shape == (68, 2)


def test_boxes_scope_and_empty_boxes(job, tmp_path: Path) -> None:
    """Only the images the boxes file names are labelled; an empty list is an image with no face."""
    (tmp_path / "two.json").write_text(json.dumps({"face1.png": [[40, 40, 120, 120]], "face3.png": []}))
    spec = job(boxes=tmp_path / "two.json")
    summary = label_folder(spec, progress=False)
    assert (summary.images, summary.faces, summary.no_face) == (2, 1, 1)
    assert [r["image"] for r in _records(spec.out)] == ["face1.png", "face3.png"]


def test_two_workers_label_as_one_process_does(job) -> None:
    one = job(max_images=3)
    two = job(max_images=3, out=one.out.parent / "two", workers=2, threads=1)
    label_folder(one, progress=False)
    label_folder(two, progress=False)
    for a, b in zip(_records(one.out), _records(two.out)):
        assert a == b
        np.testing.assert_allclose(read_pts(one.out / a["pts"]), read_pts(two.out / b["pts"]), atol=1e-4)


# ---- refusals: one line each ------------------------------------------------------------------------------------


def _refusal(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("fan-edge: error: ") and "Traceback" not in err, err
    return err


def test_refusals_are_one_line(job, capsys, tmp_path: Path) -> None:
    spec = job()
    src, ckpt, boxes = str(spec.source), spec.teachers[0], str(spec.boxes)
    common = ["--boxes", boxes, "--workers", "1", "--no-progress"]
    assert "no such folder" in _refusal(capsys, ["label", str(tmp_path / "nope"), "--teacher", ckpt, "--out", str(tmp_path / "o")])
    assert "unknown teacher 'nope'" in _refusal(capsys, ["label", src, "--teacher", "nope", "--out", str(tmp_path / "o"), *common])
    assert "unknown teacher 'fan2'" in _refusal(capsys, ["label", src, "--teacher", "fan2", "--out", str(tmp_path / "o"), *common])
    assert "no such file" in _refusal(capsys, ["label", src, "--teacher", "x.safetensors", "--out", str(tmp_path / "o"), *common])
    assert "named twice" in _refusal(capsys, ["label", src, "--teacher", ckpt, "--teacher", ckpt, "--out", str(tmp_path / "o")])
    assert "is inside" in _refusal(capsys, ["label", src, "--teacher", ckpt, "--out", str(spec.source / "labels"), *common])
    assert "is inside --out" in _refusal(capsys, ["label", src, "--teacher", ckpt, "--out", str(tmp_path), *common])
    (tmp_path / "bad.json").write_text(json.dumps({"missing.png": [[1, 2, 3, 4]]}))
    assert "not an image under" in _refusal(capsys, ["label", src, "--teacher", ckpt, "--out", str(tmp_path / "o"),
                                                     "--boxes", str(tmp_path / "bad.json")])
    assert main(["label", src, "--teacher", ckpt, "--out", str(tmp_path / "o"), *common, "--max-disagreement", "-1",
                 "--max-flip", "-1", "--max-images", "1"]) == 0
    capsys.readouterr()
    assert "other settings (thresholds differ" in _refusal(capsys, ["label", src, "--teacher", ckpt, "--out", str(tmp_path / "o"),
                                                                      *common])
    (spec.source / "face9.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "nine.json").write_text(json.dumps({"face9.png": [[1, 2, 3, 4]]}))
    nine = ["label", src, "--teacher", ckpt, "--out", str(tmp_path / "o9"), "--boxes", str(tmp_path / "nine.json"), "--no-progress"]
    refusal = _refusal(capsys, nine)
    assert "face9.png" in refusal and "--skip-unreadable" in refusal  # the way on is named
    assert main([*nine, "--skip-unreadable", "--workers", "1"]) == 0  # recorded and counted instead
    assert "1 unreadable" in capsys.readouterr().out


# ---- real photos --------------------------------------------------------------------------------------------------


@pytest.mark.data
def test_real_lfw_photos(data_dir: Path, require_shared, tmp_path: Path) -> None:
    """Four LFW photos, detected by dlib's HOG and labelled by the default model (and dlib's predictor when installed):
    every .pts parses, its points sit inside the face box, and the teachers agree with themselves on the mirror image."""
    pytest.importorskip("dlib")
    lfw = require_shared(data_dir.parent / "lfw", "LFW photos ../shared/data/lfw")
    photos = tmp_path / "lfw"
    photos.mkdir()
    for name in sorted(p.name for p in lfw.glob("*.jpg"))[:4]:
        shutil.copyfile(lfw / name, photos / name)
    teachers = ("default",)
    from fan_edge.errors import BackendError
    from fan_edge.label.teachers import dlib_shape_predictor_path

    try:
        dlib_shape_predictor_path()
        teachers += ("dlib",)
    except BackendError:  # the `label` extra is not installed: the FAN teacher alone
        pass
    spec = LabelSpec(photos, tmp_path / "out", teachers, workers=1, thresholds=Thresholds(None, None, None))
    summary = label_folder(spec, progress=False)
    assert summary.faces >= 3 and summary.kept == summary.faces
    for r in _records(spec.out):
        if r["face"] is None:
            continue
        points = read_pts(spec.out / r["pts"])
        x1, y1, x2, y2 = r["box"]
        margin = 0.15 * max(x2 - x1, y2 - y1)
        assert np.all(points[:, 0] > x1 - margin) and np.all(points[:, 0] < x2 + margin), r
        assert np.all(points[:, 1] > y1 - margin) and np.all(points[:, 1] < y2 + margin), r
        assert r["flip"] < 5.0 and (len(teachers) == 1 or r["disagreement"] < 8.0), r


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found |= {int(c) for c in task.read_text().split()}
        except OSError:  # a thread that ended meanwhile
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker processes from /proc (Linux)")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_job_stops_its_workers(job, tmp_path: Path, signum: int) -> None:
    """A job stopped by SIGTERM (or killed outright) leaves no worker process labelling its queue for nobody."""
    spec = job()
    originals = sorted(spec.source.glob("*.png"))
    for k in range(30):  # enough queued images that the workers are busy when the signal comes
        for src in originals:
            shutil.copy(src, spec.source / f"copy{k}_{src.name}")
    boxes = {p.name: [[40.0, 40.0, 120.0, 120.0]] for p in sorted(spec.source.glob("*.png"))}
    spec.boxes.write_text(json.dumps(boxes))
    cmd = [sys.executable, "-m", "fan_edge.cli", "label", str(spec.source), "--teacher", spec.teachers[0], "--boxes",
           str(spec.boxes), "--out", str(spec.out), "--workers", "2", "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ((spec.out / LABELS).is_file() and (spec.out / LABELS).read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) >= 2
    proc.send_signal(signum)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 90  # a worker still importing torch when its parent dies notices once it is up
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers)
    done = (spec.out / LABELS).read_text().count("\n")
    assert done < 6 * 31  # stopped, not finished by orphans


def test_a_worker_whose_job_died_before_it_started_exits() -> None:
    """The race behind the stopped-job test: the job killed while a worker was still starting (importing torch)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    code = f"from fan_edge.label.job import _init_worker; _init_worker(None, None, 1, {dead.pid}); print('went on')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "went on" not in done.stdout
