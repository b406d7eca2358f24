"""FaceFolder on the real 300-W faces, augmentation on real faces, and image loading.

The faces live in ``../shared/data/300w`` (fixture ``data_dir``): ``afw/`` and
``helen_train/``, 352 x 352 JPEGs with 1-based 68-point .pts files.
"""

from __future__ import annotations

import numpy as np
import pytest

from fan_edge.data import FaceFolder, landmark_boxes, read_pts, scan_folder
from fan_edge.data.augment import AugmentSpec
from fan_edge.files.images import load_image
from fan_edge.errors import DataError
from fan_edge.runtime.crop import CropSpec, apply_affine, box_center_and_side, crop_matrix, warp_image
from fan_edge.runtime.decode import crop_points_to_image, crop_to_heatmap, decode_heatmaps
from fan_edge.runtime.scheme import LEFT_EYE_OUTER, MIRROR_PAIRS, RIGHT_EYE_OUTER, mirror_permutation

SIZE = 128
STRIDE = 4.0
FLIP_ONLY = AugmentSpec(flip=1.0, rotation=0.0, scale=(1.0, 1.0), shift=0.0, color=0.0, occlusion=0.0)



@pytest.fixture(scope="module")
def afw(data_dir):
    return FaceFolder(data_dir / "afw", SIZE)


@pytest.fixture(scope="module")
def afw_points(afw):
    return np.stack([afw.points(i) for i in range(len(afw))])


def _image_px_per_crop_px(points: np.ndarray, size: int = SIZE) -> float:
    _, side = box_center_and_side(landmark_boxes(points[None])[0], CropSpec())
    return side / size


# --------------------------------------------------------------------------- listing and items


@pytest.mark.data
def test_afw_lists_337_faces(afw, data_dir):
    assert len(afw) == 337
    assert all(item.pts is not None and item.pts.stem == item.image.stem for item in afw.items)
    assert all(item.image.suffix == ".jpg" for item in afw.items)
    assert len(scan_folder(data_dir / "helen_train")) == len(list((data_dir / "helen_train").glob("*.pts")))


@pytest.mark.data
def test_item_layout(afw):
    sample = afw[0]
    image = sample["image"]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
    hm = sample["heatmaps"]
    assert hm.shape == (68, SIZE // 4, SIZE // 4) and hm.dtype == np.float32
    assert sample["matrix"].shape == (2, 3)
    assert sample["points"].shape == sample["crop_points"].shape == (68, 2)
    assert bool(sample["has_points"]) and int(sample["index"]) == 0
    np.testing.assert_allclose(sample["points"], afw.points(0))


@pytest.mark.data
def test_item_image_is_exactly_within_unit_range(afw):
    image = afw[0]["image"]
    assert image.min() >= 0.0 and image.max() <= 1.0


@pytest.mark.data
@pytest.mark.parametrize("folder", ["afw", "helen_train"])
def test_items_are_the_runtime_crop_and_points_fall_inside(data_dir, folder):
    ds = FaceFolder(data_dir / folder, SIZE)
    for index in range(0, len(ds), max(1, len(ds) // 15)):
        sample = ds[index]
        points = ds.points(index)
        # the crop is the runtime's, from the landmark box
        m = crop_matrix(landmark_boxes(points[None])[0], SIZE, CropSpec())
        np.testing.assert_allclose(sample["matrix"], m, atol=1e-12)
        np.testing.assert_allclose(sample["crop_points"], apply_affine(m, points), atol=1e-9)
        cp = sample["crop_points"]
        assert np.all(cp >= -0.5) and np.all(cp <= SIZE - 0.5)
        # every point gets a Gaussian peak
        assert np.all(sample["heatmaps"].reshape(68, -1).max(axis=1) > 0.5)
        # the pixels are the runtime's warp of the RGB image, scaled to [0, 1]
        expected = warp_image(load_image(ds.items[index].image), m, SIZE).transpose(2, 0, 1) / 255.0
        np.testing.assert_allclose(sample["image"], expected, atol=1e-6)


@pytest.mark.data
@pytest.mark.parametrize("folder", ["afw", "helen_train"])
def test_decoding_targets_gives_ground_truth_within_a_quarter_cell(data_dir, folder):
    ds = FaceFolder(data_dir / folder, SIZE)
    worst = 0.0
    for index in range(0, len(ds), max(1, len(ds) // 25)):
        sample = ds[index]
        decoded, scores = decode_heatmaps(sample["heatmaps"][None], SIZE)
        back = crop_points_to_image(decoded, sample["matrix"][None])[0]
        bound = 0.25 * STRIDE * _image_px_per_crop_px(sample["points"])
        err = np.abs(back - sample["points"]).max()
        assert err <= bound * (1 + 1e-6), f"{ds.items[index].image.name}: {err:.3f} px > {bound:.3f} px"
        worst = max(worst, err / bound)
        assert np.all(scores > 0.5)
    assert worst > 0.5  # the bound is met, not vacuous


@pytest.mark.data
def test_channel_order_is_rgb_against_opencv(afw):
    cv2 = pytest.importorskip("cv2")
    size = 256  # window / crop < 2 for these faces: no box averaging, plain bilinear like OpenCV
    ds = FaceFolder(afw.items[0].image.parent, size)
    checked = 0
    for index in range(0, len(ds), 40):
        sample = ds[index]
        m = sample["matrix"]
        if np.hypot(m[0, 0], m[1, 0]) < 0.5:
            continue
        bgr = cv2.imread(str(ds.items[index].image), cv2.IMREAD_COLOR).astype(np.float32)
        ref = cv2.warpAffine(bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        ref_rgb = ref[..., ::-1].transpose(2, 0, 1) / 255.0
        assert np.abs(sample["image"] - ref_rgb).mean() < 0.01
        assert np.abs(sample["image"] - ref.transpose(2, 0, 1) / 255.0).mean() > np.abs(sample["image"] - ref_rgb).mean()
        checked += 1
    assert checked >= 3


# --------------------------------------------------------------------------- flip augmentation


@pytest.mark.data
def test_mirror_permutation_matches_real_faces(afw_points):
    """On near-frontal faces, each point's mirror partner is the nearest mirrored landmark."""
    perm = mirror_permutation()
    P = afw_points
    io = np.linalg.norm(P[:, LEFT_EYE_OUTER] - P[:, RIGHT_EYE_OUTER], axis=1)
    yaw = np.abs(P[:, 30, 0] - (P[:, 36, 0] + P[:, 45, 0]) / 2) / io
    roll = np.abs(P[:, 36, 1] - P[:, 45, 1]) / io
    F = P[(yaw < 0.05) & (roll < 0.1)]
    assert len(F) >= 20
    mirrored = F * np.array([-1.0, 1.0])
    mirrored += F.mean(axis=1, keepdims=True) - mirrored.mean(axis=1, keepdims=True)
    # D[i, j]: median distance of mirrored point j from point i
    D = np.median(np.linalg.norm(mirrored[:, None, :, :] - F[:, :, None, :], axis=-1), axis=0)
    np.testing.assert_array_equal(D.argmin(axis=1), perm)
    # and the pairs' first members sit on the image left in (almost) every face
    for a, b in MIRROR_PAIRS:
        assert np.mean(P[:, a, 0] < P[:, b, 0]) > 0.95, (a, b)


@pytest.mark.data
def test_flip_maps_left_eye_onto_right_eye(data_dir, afw):
    flipped_ds = FaceFolder(data_dir / "afw", SIZE, augment=FLIP_ONLY, seed=7)
    perm = mirror_permutation()
    pairs = [(36, 45), (39, 42), (48, 54), (0, 16), (8, 8), (17, 26), (31, 35), (60, 64)]
    for index in (0, 5, 111, 336):
        plain, flip = afw[index], flipped_ds[index]
        p, f = plain["crop_points"], flip["crop_points"]
        for a, b in pairs:
            # the relabelled point a sits at the mirror position of the original point b, and vice versa
            np.testing.assert_allclose(f[a], [SIZE - 1 - p[b, 0], p[b, 1]], atol=1e-9)
            np.testing.assert_allclose(f[b], [SIZE - 1 - p[a, 0], p[a, 1]], atol=1e-9)
        np.testing.assert_allclose(f, (p * [-1, 1] + [SIZE - 1, 0])[perm], atol=1e-9)
        # in the new image, 36 is again on the image left of 45 (a plausible face, not a mirrored labelling)
        assert (f[36, 0] < f[45, 0]) == (p[36, 0] < p[45, 0])
        # pixels and targets are mirrored with the points
        np.testing.assert_allclose(flip["image"], plain["image"][:, :, ::-1], atol=1e-5)
        np.testing.assert_allclose(flip["heatmaps"], plain["heatmaps"][perm][:, :, ::-1], atol=1e-5)
        # decoding the flipped targets through the flipped crop gives the original points, relabelled
        decoded, _ = decode_heatmaps(flip["heatmaps"][None], SIZE)
        back = crop_points_to_image(decoded, flip["matrix"][None])[0]
        bound = 0.25 * STRIDE * _image_px_per_crop_px(plain["points"])
        assert np.abs(back - plain["points"][perm]).max() <= bound * (1 + 1e-6)
        assert np.linalg.det(flip["matrix"][:, :2]) < 0


# --------------------------------------------------------------------------- random augmentation


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k], equal_nan=True) for k in ("image", "matrix", "crop_points", "heatmaps"))


@pytest.mark.data
def test_augmentation_is_reproducible_per_seed_epoch_index(data_dir):
    spec = AugmentSpec()
    ds = FaceFolder(data_dir / "afw", SIZE, augment=spec, seed=1234)
    other = FaceFolder(data_dir / "afw", SIZE, augment=spec, seed=1234)  # another worker
    indices = (3, 17, 200)
    first = {i: ds[i] for i in indices}
    # same (seed, epoch, index) in another instance and in another order
    for i in reversed(indices):
        assert _same(other[i], first[i])
        assert _same(ds[i], first[i])
    # a new epoch draws a new transform for every item
    ds.set_epoch(1)
    for i in indices:
        again = ds[i]
        assert not np.allclose(again["matrix"], first[i]["matrix"])
        assert not np.array_equal(again["image"], first[i]["image"])
    other.set_epoch(1)
    assert _same(other[17], ds[17])
    # and back to epoch 0 reproduces the first draw
    ds.set_epoch(0)
    assert _same(ds[17], first[17])
    # another seed draws differently
    third = FaceFolder(data_dir / "afw", SIZE, augment=spec, seed=1235)
    assert not np.allclose(third[17]["matrix"], first[17]["matrix"])


@pytest.mark.data
def test_augmented_targets_decode_to_the_ground_truth(data_dir):
    """Rotation, scale, shift and flip: targets, pixels and points stay on one transform."""
    spec = AugmentSpec(color=0.0, occlusion=0.0)
    ds = FaceFolder(data_dir / "afw", SIZE, augment=spec, seed=3)
    perm = mirror_permutation()
    size_hm = SIZE // 4
    flips = 0
    for epoch in range(2):
        ds.set_epoch(epoch)
        for index in (0, 9, 42, 100, 250):
            sample = ds[index]
            m = sample["matrix"]
            flipped = np.linalg.det(m[:, :2]) < 0
            flips += flipped
            gt = sample["points"][perm] if flipped else sample["points"]
            np.testing.assert_allclose(sample["crop_points"], apply_affine(m, gt), atol=1e-9)
            # pixels come from the same matrix
            expected = warp_image(load_image(ds.items[index].image), m, SIZE).transpose(2, 0, 1) / 255.0
            np.testing.assert_allclose(sample["image"], np.clip(expected, 0, 1), atol=1e-5)
            decoded, _ = decode_heatmaps(sample["heatmaps"][None], SIZE)
            back = crop_points_to_image(decoded, m[None])[0]
            cells = crop_to_heatmap(sample["crop_points"], STRIDE)
            inner = np.all((cells >= 0.5) & (cells <= size_hm - 1.5), axis=1)
            assert inner.sum() > 34
            px_per_crop = 1.0 / np.sqrt(abs(np.linalg.det(m[:, :2])))
            bound = 0.25 * np.sqrt(2) * STRIDE * px_per_crop  # rotated: the per-axis bound becomes a radius
            err = np.linalg.norm(back - gt, axis=-1)[inner]
            assert err.max() <= bound * (1 + 1e-6)
            # points pushed out of the crop get no target
            outside = np.any((sample["crop_points"] < -0.5 - 4) | (sample["crop_points"] > SIZE - 0.5 + 4), axis=1)
            assert not sample["heatmaps"][outside].any()
    assert 0 < flips < 10


@pytest.mark.data
def test_default_augmentation_items_are_well_formed(data_dir):
    ds = FaceFolder(data_dir / "helen_train", SIZE, augment=AugmentSpec(), seed=0)
    for index in (0, 1, 2, 3):
        s = ds[index]
        assert s["image"].shape == (3, SIZE, SIZE) and s["image"].dtype == np.float32
        assert np.all(np.isfinite(s["image"])) and s["image"].min() >= 0 and s["image"].max() <= 1
        assert s["heatmaps"].shape == (68, SIZE // 4, SIZE // 4)
        assert np.all(np.isfinite(s["crop_points"]))


# --------------------------------------------------------------------------- folders without data


def test_scan_folder_errors(tmp_path):
    with pytest.raises(DataError) as excinfo:
        scan_folder(tmp_path)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(DataError):
        scan_folder(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "face.pts").write_text("1 1\n")  # annotation without image
    with pytest.raises(DataError):
        FaceFolder(tmp_path, SIZE)


def test_unannotated_images(tmp_path):
    cv2 = pytest.importorskip("cv2")
    sub = tmp_path / "nested"
    sub.mkdir()
    cv2.imwrite(str(sub / "a.png"), np.full((60, 80, 3), 100, np.uint8))
    with pytest.raises(DataError):
        scan_folder(tmp_path)
    items = scan_folder(tmp_path, require_points=False)
    assert [i.image.name for i in items] == ["a.png"] and items[0].pts is None
    ds = FaceFolder(tmp_path, 64, require_points=False)
    s = ds[0]
    assert not bool(s["has_points"])
    assert np.all(np.isnan(s["points"]))
    assert s["heatmaps"].shape == (68, 16, 16) and not s["heatmaps"].any()
    assert s["image"].shape == (3, 64, 64)
    with pytest.raises(DataError):
        ds.points(0)


# --------------------------------------------------------------------------- load_image


def test_load_image_gray(tmp_path):
    cv2 = pytest.importorskip("cv2")
    gray = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) % 256
    path = tmp_path / "gray.png"
    assert cv2.imwrite(str(path), gray.astype(np.uint8))
    img = load_image(path)
    assert img.shape == (48, 64, 3) and img.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)


def test_load_image_rgba_drops_alpha_and_is_rgb(tmp_path):
    cv2 = pytest.importorskip("cv2")
    bgra = np.zeros((10, 12, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 40
    path = tmp_path / "rgba.png"
    assert cv2.imwrite(str(path), bgra)
    img = load_image(path)
    assert img.shape == (10, 12, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img[0, 0], [30.0, 20.0, 10.0])


def test_load_image_colour_is_rgb(tmp_path):
    cv2 = pytest.importorskip("cv2")
    bgr = np.zeros((8, 9, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's order
    path = tmp_path / "red.png"
    assert cv2.imwrite(str(path), bgr)
    np.testing.assert_array_equal(load_image(path)[3, 3], [255.0, 0.0, 0.0])


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_load_image_16_bit(tmp_path, channels):
    cv2 = pytest.importorskip("cv2")
    shape = (16, 20) if channels == 1 else (16, 20, channels)
    img16 = np.zeros(shape, np.uint16)
    img16[0, 0] = 65535
    img16[1, 1] = 257 * 100
    path = tmp_path / f"deep{channels}.png"
    assert cv2.imwrite(str(path), img16)
    img = load_image(path)
    assert img.shape == (16, 20, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 255.0
    np.testing.assert_allclose(img[0, 0], 255.0)
    np.testing.assert_allclose(img[1, 1], 100.0)
    assert img[2, 2].max() == 0.0


@pytest.mark.data
def test_load_real_face(data_dir):
    path = sorted((data_dir / "afw").glob("*.jpg"))[0]
    img = load_image(path)
    assert img.shape == (352, 352, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 255.0 and img.max() > 100
    assert read_pts(path.with_suffix(".pts")).shape == (68, 2)


@pytest.mark.parametrize(
    "name,payload",
    [
        ("notes.jpg", b"this is not an image at all\n"),
        ("junk.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40),
        ("empty.jpg", b""),
    ],
)
def test_load_image_rejects_non_images(tmp_path, name, payload):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(DataError) as excinfo:
        load_image(path)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(DataError):
        load_image(tmp_path / "missing.png")
