"""Calibration faces: pose and lighting descriptors, the covering selection, the detector route, the adapters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fan_edge.calibration import FaceCrops, calibration_faces, cover, lighting, pose_proxies
from fan_edge.data.augment import mirror_points
from fan_edge.files.pts import read_pts
from fan_edge.errors import DataError
from fan_edge.runtime.detect import Detections


def _real_points(data_dir: Path, count: int = 12) -> np.ndarray:
    files = sorted((data_dir / "afw").glob("*.pts"))[:count]
    return np.stack([read_pts(f) for f in files])


def test_pose_proxies_mirror_and_rotate_as_a_head_does(data_dir):
    pts = _real_points(data_dir)
    pose = pose_proxies(pts)
    assert np.isfinite(pose).all() and pose.shape == (len(pts), 3)
    # A mirrored face (x -> -x, points relabelled) turns the other way: roll and yaw change sign, pitch stays.
    flipped = np.stack([mirror_points(p * [-1.0, 1.0]) for p in pts])
    mirrored = pose_proxies(flipped)
    np.testing.assert_allclose(mirrored[:, 0], -pose[:, 0], atol=1e-9)
    np.testing.assert_allclose(mirrored[:, 1], -pose[:, 1], atol=1e-9)
    np.testing.assert_allclose(mirrored[:, 2], pose[:, 2], atol=1e-9)
    # Rotating the image by 0.3 rad adds 0.3 to roll and leaves yaw and pitch alone (they live in the upright frame).
    c, s = np.cos(0.3), np.sin(0.3)
    rotated = pose_proxies(pts @ np.array([[c, s], [-s, c]]) + [50.0, -20.0])
    np.testing.assert_allclose(np.angle(np.exp(1j * (rotated[:, 0] - pose[:, 0]))), 0.3, atol=1e-9)
    np.testing.assert_allclose(rotated[:, 1:], pose[:, 1:], atol=1e-9)


def test_pose_proxies_of_faces_without_points_are_nan():
    pts = np.full((2, 68, 2), np.nan)
    assert np.isnan(pose_proxies(pts)).all()
    assert np.isnan(pose_proxies(np.zeros((3, 5, 2)))).all()  # not the 68-point scheme


def test_lighting_sees_brightness_contrast_and_side_light():
    flat = np.full((1, 3, 16, 16), 0.5)
    left_lit = flat.copy()
    left_lit[..., :8] = 0.9
    f = lighting(np.concatenate([flat, flat * 0.5, left_lit]))
    assert f[1, 0] < f[0, 0] < f[2, 0]  # brightness
    assert f[0, 1] == pytest.approx(0.0) and f[2, 1] > 0.1  # contrast
    assert f[0, 2] == pytest.approx(0.0) and f[2, 2] > 0.5  # light from the left


def test_cover_takes_one_face_from_each_cluster_whatever_their_sizes():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    sizes = [200, 50, 10, 5]  # a folder dominated by one kind of face
    x = np.concatenate([c + rng.normal(0, 0.3, (n, 2)) for c, n in zip(centres, sizes)])
    label = np.repeat(np.arange(4), sizes)
    for seed in range(5):
        assert sorted(label[cover(x, 4, seed=seed)]) == [0, 1, 2, 3]
    picked = cover(x, 4, seed=0)
    assert picked.tolist() == sorted(set(picked.tolist()))
    np.testing.assert_array_equal(picked, cover(x, 4, seed=0))  # deterministic
    assert cover(x, 1000).tolist() == list(range(len(x)))  # fewer faces than asked: all of them


def test_cover_ignores_features_that_are_missing_everywhere():
    x = np.column_stack([np.full(10, np.nan), np.arange(10.0)])
    picked = cover(x, 3, seed=1)
    assert len(picked) == 3 and len(set(picked.tolist())) == 3


def test_cover_selection_from_a_folder(synthetic_faces):
    a = FaceCrops(synthetic_faces, 64, count=3, select="cover", seed=0)
    b = FaceCrops(synthetic_faces, 64, count=3, select="cover", seed=0)
    assert len(a) == 3 and a.indices.tolist() == b.indices.tolist()
    assert a.describe().shape == (3, 6) and a.labeled
    everything = calibration_faces(synthetic_faces, 64, count=100)
    assert len(everything) == 6
    with pytest.raises(DataError, match="selection"):
        FaceCrops(synthetic_faces, 64, select="first")
    with pytest.raises(DataError, match="positive"):
        FaceCrops(synthetic_faces, 64, count=0)


def test_every_quantizer_adapter_serves_the_same_faces_one_per_sample(synthetic_faces):
    faces = calibration_faces(synthetic_faces, 64, count=4)
    images = faces.load()["images"]
    assert images.shape == (4, 3, 64, 64) and images.dtype == np.float32
    pytest.importorskip("onnxruntime")
    reader = faces.onnxruntime_reader("input")
    served = []
    while (item := reader.get_next()) is not None:
        served.append(item["input"])
    reader.rewind()
    assert reader.get_next()["input"].shape == (1, 3, 64, 64)
    np.testing.assert_array_equal(np.concatenate(served), images)
    tflite = faces.litert_calibration("input", "NHWC")["serving_default"]
    np.testing.assert_array_equal(np.concatenate([d["input"] for d in tflite]), images.transpose(0, 2, 3, 1))
    tensors = faces.tensors()
    assert len(tensors) == 4 and tuple(tensors[0].shape) == (1, 3, 64, 64)
    np.testing.assert_array_equal(np.concatenate([t.numpy() for t in faces.tensors(batch_size=3)]), images)
    pytest.importorskip("nncf")
    dataset = faces.nncf_dataset(torch_tensors=True)
    items = list(dataset.get_inference_data())
    assert len(items) == 4 and tuple(items[0].shape) == (1, 3, 64, 64)


class _FakeDetector:
    """Finds a face (a fixed box) in every image whose name is not listed as empty."""

    def __init__(self, empty: set[str]) -> None:
        self.empty = empty
        self.calls = 0

    def detect(self, image: np.ndarray) -> Detections:
        self.calls += 1
        if image.shape[0] in self.empty:
            return Detections(np.zeros((0, 4)), np.zeros(0))
        h, w = image.shape[:2]
        return Detections(np.array([[w * 0.25, h * 0.25, w * 0.75, h * 0.75], [0, 0, 5, 5]]), np.array([0.9, 0.1]))


def test_unlabeled_faces_are_boxed_by_a_detector(synthetic_faces, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, img in enumerate(sorted(synthetic_faces.glob("*.png"))):
        (folder / img.name).write_bytes(img.read_bytes())
        if i < 2:  # two labeled faces, four without points
            (folder / img.with_suffix(".pts").name).write_bytes(img.with_suffix(".pts").read_bytes())
    # Without a detector only the labeled faces are used.
    assert len(FaceCrops(folder, 64, count=None)) == 2
    # The synthetic images are 160 + 16 i pixels tall: let the detector miss the one of height 208 (i = 3).
    detector = _FakeDetector(empty={208})
    faces = FaceCrops(folder, 64, count=None, detector=detector)
    assert len(faces) == 5 and detector.calls == 4 and not faces.labeled
    unlabeled = np.array([faces.dataset.items[int(i)].pts is None for i in faces.indices])
    assert unlabeled.sum() == 3
    for i in faces.indices[unlabeled]:  # the best-scored box (the first), not the tiny second one
        box = faces.dataset.boxes[int(i)]
        assert box[2] - box[0] > 5
    data = faces.load()
    assert data["images"].shape == (5, 3, 64, 64)
    assert np.isnan(data["points"][unlabeled]).all() and np.isfinite(data["points"][~unlabeled]).all()
    # The covering selection describes such faces by lighting alone.
    assert len(FaceCrops(folder, 64, count=3, select="cover", detector=_FakeDetector(set()))) == 3
    with pytest.raises(DataError, match="detect"):
        FaceCrops(folder, 64, detector=object())


def test_a_folder_without_points_and_without_a_detector_is_a_data_error(tmp_path, synthetic_faces):
    folder = tmp_path / "bare"
    folder.mkdir()
    img = next(iter(sorted(synthetic_faces.glob("*.png"))))
    (folder / img.name).write_bytes(img.read_bytes())
    with pytest.raises(DataError, match="no images with .pts"):
        FaceCrops(folder, 64)
    with pytest.raises(DataError, match="found no face"):
        FaceCrops(folder, 64, detector=_FakeDetector(empty={160}))
