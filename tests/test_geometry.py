"""Geometry shared by training and the runtime: crop, warp, heatmap targets, decoding, augmentation.

Conventions under test (``fan_edge.runtime.crop`` / ``decode``): 0-based pixel
centres; FAN's crop window (centre moved up by 0.12 h, side 200 (w + h) / 195)
whose outer edges land on the crop's outer edges; heatmap cell ``j`` centred at
crop coordinate ``stride * j + (stride - 1) / 2``; decoding = argmax plus a
quarter-cell step toward the higher neighbour.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fan_edge.data.augment import AugmentSpec, mirror_points, random_similarity
from fan_edge.data.dataset import FaceFolder
from fan_edge.data.heatmaps import gaussian_heatmaps
from fan_edge.files.folders import landmark_boxes
from fan_edge.files.pts import write_pts
from fan_edge.runtime.crop import (
    CropSpec,
    apply_affine,
    box_center_and_side,
    compose_affine,
    crop_matrices,
    crop_matrix,
    invert_affine,
    resize_matrix,
    warp_image,
)
from fan_edge.runtime.decode import (
    argmax_quarter,
    crop_points_to_image,
    crop_to_heatmap,
    decode_heatmaps,
    heatmap_to_crop,
)
from fan_edge.runtime.scheme import MIRROR_PAIRS, NUM_LANDMARKS, REGIONS, mirror_permutation

INPUT_SIZES = (256, 192, 128)

# (x1, y1, x2, y2): small, large, off-centre, non-square (wide and tall), fractional.
BOXES = [
    (100.0, 120.0, 250.0, 290.0),
    (10.0, 5.0, 60.0, 47.0),
    (-40.0, 300.0, 400.0, 520.0),
    (500.5, 33.25, 980.75, 210.0),
    (77.0, 12.0, 131.0, 400.0),
    (3.3, 4.4, 1503.3, 1204.4),
]


def _scale(box, size: int, spec: CropSpec | None = None) -> float:
    """Image pixels per crop pixel for this box."""
    _, side = box_center_and_side(np.asarray(box), spec or CropSpec())
    return side / size


# --------------------------------------------------------------------------- crop matrix


@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("size", INPUT_SIZES)
@pytest.mark.parametrize("spec", [CropSpec(), CropSpec(reference_scale=180.0, center_shift=0.0, window=220.0)])
def test_crop_matrix_maps_window_edges_onto_crop_edges(box, size, spec):
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 - spec.center_shift * h
    side = spec.window * (w + h) / spec.reference_scale
    center, got_side = box_center_and_side(np.asarray(box), spec)
    np.testing.assert_allclose(center, [cx, cy], rtol=0, atol=1e-9)
    assert got_side == pytest.approx(side, rel=1e-12)

    m = crop_matrix(np.asarray(box), size, spec)
    assert m.shape == (2, 3)
    # A similarity without rotation: uniform scale N / side on both axes.
    np.testing.assert_allclose(m[:, :2], np.eye(2) * size / side, rtol=1e-12)
    edges = np.array(
        [
            [cx - side / 2, cy - side / 2],  # window's outer top-left corner
            [cx + side / 2, cy + side / 2],  # outer bottom-right corner
            [cx - side / 2, cy + side / 2],
            [cx, cy],  # centre
        ]
    )
    expected = np.array([[-0.5, -0.5], [size - 0.5, size - 0.5], [-0.5, size - 0.5], [(size - 1) / 2, (size - 1) / 2]])
    np.testing.assert_allclose(apply_affine(m, edges), expected, rtol=0, atol=1e-9 * max(1.0, side))


def test_center_shift_is_upward_fraction_of_height():
    box = np.array([0.0, 0.0, 100.0, 200.0])
    center, side = box_center_and_side(box, CropSpec())
    np.testing.assert_allclose(center, [50.0, 100.0 - 0.12 * 200.0])
    assert side == pytest.approx(200.0 * 300.0 / 195.0)


def test_crop_spec_dict_round_trip():
    spec = CropSpec(reference_scale=190.0, center_shift=0.1, window=210.0)
    assert CropSpec.from_dict(spec.to_dict()) == spec
    assert CropSpec.from_dict({"reference_scale": 195, "center_shift": 0.12, "window": 200}) == CropSpec()


def test_crop_matrices_stack_matches_single_and_empty():
    boxes = np.array(BOXES)
    stack = crop_matrices(boxes, 192, CropSpec())
    assert stack.shape == (len(BOXES), 2, 3)
    for b, m in zip(boxes, stack):
        np.testing.assert_array_equal(m, crop_matrix(b, 192, CropSpec()))
    assert crop_matrices(np.zeros((0, 4)), 192, CropSpec()).shape == (0, 2, 3)


@pytest.mark.parametrize("size, new_size", [(64, 128), (128, 256), (256, 128), (128, 192)])
def test_resize_matrix_recuts_the_same_window(size, new_size):
    """A crop re-cut at another size through resize_matrix is the crop made at that size directly."""
    for box in BOXES:
        for spec in (CropSpec(), CropSpec(reference_scale=280.0, center_shift=0.0)):
            np.testing.assert_allclose(compose_affine(resize_matrix(size, new_size), crop_matrix(np.array(box), size, spec)),
                                       crop_matrix(np.array(box), new_size, spec), atol=1e-9)


# --------------------------------------------------------------------------- affine helpers


def _affine(angle=0.3, scale=1.7, shear=0.2, tx=12.0, ty=-7.0, flip=False) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    lin = np.array([[c, -s], [s, c]]) @ np.array([[scale, shear], [0.0, scale * 0.8]])
    if flip:
        lin = lin @ np.diag([-1.0, 1.0])
    return np.hstack([lin, [[tx], [ty]]])


def test_invert_compose_apply_are_consistent():
    rng = np.random.default_rng(0)
    a, b = _affine(), _affine(angle=-1.1, scale=0.4, shear=-0.3, tx=100.0, ty=3.0, flip=True)
    pts = rng.uniform(-500, 500, size=(20, 2))
    # compose: inner first, then outer
    np.testing.assert_allclose(apply_affine(compose_affine(a, b), pts), apply_affine(a, apply_affine(b, pts)), atol=1e-9)
    # inverse on both sides
    identity = np.hstack([np.eye(2), np.zeros((2, 1))])
    np.testing.assert_allclose(compose_affine(invert_affine(a), a), identity, atol=1e-12)
    np.testing.assert_allclose(compose_affine(a, invert_affine(a)), identity, atol=1e-12)
    np.testing.assert_allclose(apply_affine(invert_affine(a), apply_affine(a, pts)), pts, atol=1e-9)
    # inverse of a composition is the reversed composition of inverses
    np.testing.assert_allclose(
        invert_affine(compose_affine(a, b)), compose_affine(invert_affine(b), invert_affine(a)), atol=1e-10
    )
    # stacks of matrices with matching stacks of points
    stack = np.stack([a, b])
    pts2 = rng.uniform(-50, 50, size=(2, 7, 2))
    got = apply_affine(stack, pts2)
    np.testing.assert_allclose(got, np.stack([apply_affine(a, pts2[0]), apply_affine(b, pts2[1])]), atol=1e-12)
    inv = invert_affine(stack)
    np.testing.assert_allclose(inv, np.stack([invert_affine(a), invert_affine(b)]), atol=1e-12)
    np.testing.assert_allclose(crop_points_to_image(got, stack), pts2, atol=1e-9)


def test_apply_affine_of_translation_and_single_point():
    m = np.array([[1.0, 0.0, 2.5], [0.0, 1.0, -1.0]])
    np.testing.assert_allclose(apply_affine(m, np.array([[0.0, 0.0], [1.0, 2.0]])), [[2.5, -1.0], [3.5, 1.0]])


# --------------------------------------------------------------------------- hypothesis properties

coord = st.floats(-2000.0, 2000.0, allow_nan=False, allow_infinity=False)
extent = st.floats(2.0, 2000.0, allow_nan=False, allow_infinity=False)
points_strategy = hnp.arrays(np.float64, st.tuples(st.integers(1, 68), st.just(2)), elements=coord)


@settings(max_examples=50, deadline=None)
@given(x1=coord, y1=coord, w=extent, h=extent, size=st.sampled_from(INPUT_SIZES), pts=points_strategy)
def test_property_crop_round_trip(x1, y1, w, h, size, pts):
    box = np.array([x1, y1, x1 + w, y1 + h])
    m = crop_matrix(box, size, CropSpec())
    crop = apply_affine(m, pts)
    back = apply_affine(invert_affine(m), crop)
    assert np.all(np.isfinite(crop)) and np.all(np.isfinite(back))
    np.testing.assert_allclose(back, pts, rtol=0, atol=1e-6 * max(1.0, np.abs(pts).max(), abs(x1), abs(y1), w, h))
    # and the decoding-side helper agrees
    np.testing.assert_allclose(crop_points_to_image(crop[None], m[None])[0], back, atol=1e-9 * max(1.0, np.abs(back).max()))


@settings(max_examples=50, deadline=None)
@given(
    angle=st.floats(-np.pi, np.pi),
    scale=st.floats(0.05, 20.0),
    aspect=st.floats(0.5, 2.0),
    shear=st.floats(-0.5, 0.5),
    tx=coord,
    ty=coord,
    flip=st.booleans(),
    pts=points_strategy,
)
def test_property_affine_apply_then_invert(angle, scale, aspect, shear, tx, ty, flip, pts):
    m = _affine(angle, scale, shear * scale, tx, ty, flip)
    m[1, :2] *= aspect
    assume(abs(np.linalg.det(m[:, :2])) > 1e-3)
    inv = invert_affine(m)
    assert np.all(np.isfinite(inv))
    out = apply_affine(m, pts)
    back = apply_affine(inv, out)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(back))
    np.testing.assert_allclose(back, pts, rtol=0, atol=1e-6 * max(1.0, np.abs(pts).max(), abs(tx), abs(ty)))
    identity = np.hstack([np.eye(2), np.zeros((2, 1))])
    np.testing.assert_allclose(compose_affine(inv, m), identity, atol=1e-9 * max(1.0, abs(tx), abs(ty)))


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)),
        elements=st.floats(-1e6, 1e6, width=32),
    )
)
def test_property_argmax_quarter_finite_and_inside(hm):
    coords, scores = argmax_quarter(hm)
    k, h, w = hm.shape
    assert coords.shape == (k, 2) and scores.shape == (k,)
    assert np.all(np.isfinite(coords))
    assert np.all(coords[:, 0] >= 0) and np.all(coords[:, 0] <= w - 1)
    assert np.all(coords[:, 1] >= 0) and np.all(coords[:, 1] <= h - 1)
    np.testing.assert_array_equal(scores, hm.reshape(k, -1).max(axis=1))
    # the step is a quarter cell at most, from an integer cell
    frac = coords - np.round(coords)
    assert np.all(np.isin(np.abs(frac), [0.0, 0.25]))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_argmax_quarter_finite_peak_between_minus_inf_neighbours():
    hm = np.full((1, 5, 5), -np.inf, np.float32)
    hm[0, 2, 2] = 0.0  # e.g. a log-heatmap: a clear peak, -inf elsewhere
    coords, _ = argmax_quarter(hm)
    np.testing.assert_array_equal(coords, [[2.0, 2.0]])


# --------------------------------------------------------------------------- decoding conventions


@pytest.mark.parametrize("size", INPUT_SIZES)
def test_heatmap_cell_centres(size):
    stride = size / (size // 4)
    # cell j covers crop pixels stride*j .. stride*j + stride - 1
    np.testing.assert_allclose(heatmap_to_crop(np.array([0.0, 1.0]), stride), [(stride - 1) / 2, stride + (stride - 1) / 2])
    p = np.array([[0.0, 3.7], [size - 1.0, 10.0]])
    np.testing.assert_allclose(heatmap_to_crop(crop_to_heatmap(p, stride), stride), p, atol=1e-12)


def test_argmax_quarter_steps():
    hm = np.zeros((3, 5, 6), np.float32)
    hm[0, 2, 3] = 1.0  # isolated peak: no step
    hm[1, 2, 3], hm[1, 2, 4], hm[1, 1, 3] = 1.0, 0.5, 0.25  # step +x and -y
    hm[2, 0, 0], hm[2, 0, 1] = 1.0, 0.9  # border cell: no step
    coords, scores = argmax_quarter(hm)
    np.testing.assert_array_equal(coords, [[3.0, 2.0], [3.25, 1.75], [0.0, 0.0]])
    np.testing.assert_array_equal(scores, [1.0, 1.0, 1.0])


def _quarter_grid_cells(rng, k: int, size: int) -> np.ndarray:
    """Cell coordinates the decoder can output exactly: integer cells plus 0 or +-0.25, away from the border."""
    base = rng.integers(1, size - 1, size=(k, 2)).astype(np.float64)
    return base + rng.choice([-0.25, 0.0, 0.25], size=(k, 2))


@pytest.mark.parametrize("size", INPUT_SIZES)
def test_round_trip_quarter_grid_points_exact(size):
    """Image points whose heatmap cells are on the decoder's quarter grid come back within 0.1 px."""
    rng = np.random.default_rng(size)
    hm_size = size // 4
    stride = size / hm_size
    boxes = np.array(BOXES)
    matrices = crop_matrices(boxes, size, CropSpec())
    # Choose cells first, then the image points that land on them.
    cells = np.stack([_quarter_grid_cells(rng, NUM_LANDMARKS, hm_size) for _ in boxes])
    image_pts = crop_points_to_image(heatmap_to_crop(cells, stride), matrices)
    # Forward: the training-target path.
    crop_pts = apply_affine(matrices, image_pts)
    heatmaps = np.stack([gaussian_heatmaps(p, size, sigma=1.0) for p in crop_pts])
    assert heatmaps.shape == (len(boxes), NUM_LANDMARKS, hm_size, hm_size)
    # Back: the runtime path.
    decoded, scores = decode_heatmaps(heatmaps, size)
    back = crop_points_to_image(decoded, matrices)
    assert np.all(scores > 0.5)
    err = np.linalg.norm(back - image_pts, axis=-1)
    assert err.max() < 0.1, f"max error {err.max():.4f} px at input {size}"


@pytest.mark.parametrize("size", INPUT_SIZES)
@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_round_trip_arbitrary_points_within_quarter_cell(size, sigma):
    """Any sub-cell point decodes within 0.25 cell (per axis) = 0.25 * stride * side / size image pixels."""
    rng = np.random.default_rng(1000 + size)
    hm_size = size // 4
    stride = size / hm_size
    for box in BOXES:
        m = crop_matrix(np.asarray(box), size, CropSpec())
        # inner cells only: the border cells get no quarter step (error up to half a cell there)
        cells = rng.uniform(0.55, hm_size - 1.55, size=(NUM_LANDMARKS, 2))
        image_pts = apply_affine(invert_affine(m), heatmap_to_crop(cells, stride))
        heatmaps = gaussian_heatmaps(apply_affine(m, image_pts), size, sigma=sigma)
        decoded, _ = decode_heatmaps(heatmaps[None], size)
        back = crop_points_to_image(decoded, m[None])[0]
        bound = 0.25 * stride * _scale(box, size)
        assert np.abs(back - image_pts).max() <= bound * (1 + 1e-6)
        # and the bound is tight-ish: the error is not identically zero
        assert np.abs(back - image_pts).max() > 0.1 * bound


def test_half_cell_points_decode_a_quarter_cell_off():
    """Documents the decoder's worst case: a point exactly between two cells is off by a quarter cell."""
    size, hm_size = 128, 32
    crop = heatmap_to_crop(np.array([[10.5, 7.0]]), 4.0)
    decoded, _ = decode_heatmaps(gaussian_heatmaps(crop, size)[None], size)
    cells = crop_to_heatmap(decoded[0], 4.0)
    assert abs(cells[0, 0] - 10.5) == pytest.approx(0.25)
    assert cells[0, 1] == pytest.approx(7.0)
    assert hm_size == size // 4


def test_gaussian_heatmaps_peak_and_outside_points():
    size = 128
    pts = np.array([[63.5, 63.5], [-10.0, 20.0], [20.0, 300.0], [1.5, 1.5]])
    hm = gaussian_heatmaps(pts, size)
    assert hm.dtype == np.float32 and hm.shape == (4, 32, 32)
    # 63.5 crop px is cell 15.5: four cells share the peak exp(-0.25)
    assert hm[0].max() == pytest.approx(np.exp(-0.25), rel=1e-5)
    assert not hm[1].any() and not hm[2].any()
    # 1.5 crop px is the centre of cell 0
    assert hm[3, 0, 0] == pytest.approx(1.0)
    assert hm[3, 0, 1] == pytest.approx(np.exp(-0.5), rel=1e-5)


# --------------------------------------------------------------------------- warp_image


def _bilinear_delta(matrix: np.ndarray, size: int, px: float, py: float) -> np.ndarray:
    """What a bilinear warp of a unit pixel at (px, py) gives, computed independently."""
    inv = invert_affine(matrix)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    qx = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
    qy = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    return np.clip(1 - np.abs(qx - px), 0, None) * np.clip(1 - np.abs(qy - py), 0, None)


def _centroid(img: np.ndarray) -> np.ndarray:
    v, u = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    total = img.sum()
    assert total > 0
    return np.array([(u * img).sum() / total, (v * img).sum() / total])


@pytest.mark.parametrize(
    "box,size,px,py",
    [
        ((100.0, 120.0, 180.0, 200.0), 128, 137, 151),  # window ~164 px onto 128: spacing 1.3
        ((100.0, 120.0, 180.0, 200.0), 256, 120, 170),  # upsampling
        ((30.0, 10.0, 90.0, 100.0), 192, 55, 40),  # non-square box
    ],
)
def test_warp_single_bright_pixel_bilinear(box, size, px, py):
    image = np.zeros((300, 320, 3), np.float32)
    image[py, px] = (255.0, 128.0, 1.0)
    m = crop_matrix(np.asarray(box), size, CropSpec())
    assert np.hypot(*invert_affine(m)[:, 0]) < 2.0  # no halving here
    crop = warp_image(image, m, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.float32
    expected = _bilinear_delta(m, size, px, py)
    for c, value in enumerate((255.0, 128.0, 1.0)):
        np.testing.assert_allclose(crop[..., c], value * expected, atol=1e-3 * value)
    predicted = apply_affine(m, np.array([[px, py]], float))[0]
    np.testing.assert_allclose(_centroid(crop[..., 0]), predicted, atol=0.35)


def test_warp_bright_pixel_at_crop_pixel_centre_keeps_value():
    # A matrix that sends image (40, 30) exactly onto crop pixel (10, 20).
    m = np.array([[0.75, 0.0, 10 - 0.75 * 40], [0.0, 0.75, 20 - 0.75 * 30]])
    image = np.zeros((64, 64, 1), np.float32)
    image[30, 40] = 200.0
    crop = warp_image(image, m, 32)
    assert crop[20, 10, 0] == pytest.approx(200.0)
    assert np.unravel_index(crop[..., 0].argmax(), (32, 32)) == (20, 10)


@pytest.mark.parametrize(
    "box,size",
    [
        ((50.0, 60.0, 450.0, 470.0), 128),  # window ~830 px onto 128: spacing 6.5, two halvings
        ((0.0, 0.0, 300.0, 260.0), 64),  # spacing ~9.5
        ((10.0, 20.0, 200.0, 230.0), 128),  # spacing ~3.2, one halving
    ],
)
@pytest.mark.parametrize("offset", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_warp_single_bright_pixel_halving_path(box, size, offset):
    m = crop_matrix(np.asarray(box), size, CropSpec())
    spacing = np.hypot(*invert_affine(m)[:, 0])
    assert spacing > 2.0
    center, _ = box_center_and_side(np.asarray(box), CropSpec())
    px, py = int(center[0]) + 17 + offset[0], int(center[1]) - 23 + offset[1]
    image = np.zeros((900, 900, 1), np.float32)
    image[py, px] = 1000.0
    crop = warp_image(image, m, size)[..., 0]
    predicted = apply_affine(m, np.array([[px, py]], float))[0]
    assert np.all(crop >= 0)
    # Box averaging quantises the position by < 1 crop pixel; bilinear keeps it local.
    np.testing.assert_allclose(_centroid(crop), predicted, atol=0.75)
    peak = np.array(np.unravel_index(crop.argmax(), crop.shape))[::-1]
    assert np.abs(peak - predicted).max() <= 1.0
    # Box averaging spreads the pixel: no crop pixel sees more than one halved pixel's worth.
    halvings = int(np.floor(np.log2(spacing)))
    assert crop.max() <= 1000.0 / 4**halvings * (1 + 1e-5)


RAMP_SIDE = 1400


def _ramp() -> np.ndarray:
    yy, xx = np.mgrid[0:RAMP_SIDE, 0:RAMP_SIDE].astype(np.float64)
    return np.stack([0.25 * xx + 0.05 * yy + 3.0, 0.3 * yy - 0.02 * xx + 20.0], axis=-1).astype(np.float32)


def _ramp_at(qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    return np.stack([0.25 * qx + 0.05 * qy + 3.0, 0.3 * qy - 0.02 * qx + 20.0], axis=-1)


def _sample_positions(m: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    inv = invert_affine(m)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    return inv[0, 0] * u + inv[0, 1] * v + inv[0, 2], inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]


def _rotated_about_crop_centre(m: np.ndarray, size: int, angle: float) -> np.ndarray:
    c = (size - 1) / 2
    rot = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0]])
    rot[:, 2] = [c, c] - rot[:, :2] @ [c, c]
    return compose_affine(rot, m)


@pytest.mark.parametrize(
    "box,size",
    [
        ((500.0, 520.0, 900.0, 930.0), 128),  # spacing 6.5: two halvings
        ((550.0, 530.0, 800.0, 810.0), 64),  # spacing ~8.5: three halvings
        ((580.0, 590.0, 760.0, 790.0), 128),  # spacing ~3: one halving
        ((600.0, 620.0, 670.0, 680.0), 128),  # spacing ~1: plain bilinear
        ((600.0, 620.0, 650.0, 650.0), 256),  # upsampling
    ],
)
@pytest.mark.parametrize("angle", [0.0, 0.4])
def test_warp_linear_ramp_is_exact(box, size, angle):
    """Box averaging and bilinear interpolation both reproduce a linear image exactly.

    So the warp of ``a x + b y + c`` must equal the ramp at each crop pixel's
    image position: any half-pixel slip in the halving path shows up as
    ``a * slip``.
    """
    m = _rotated_about_crop_centre(crop_matrix(np.asarray(box), size, CropSpec()), size, angle)
    crop = warp_image(_ramp(), m, size)
    qx, qy = _sample_positions(m, size)
    assert qx.min() > 20 and qy.min() > 20 and qx.max() < RAMP_SIDE - 20 and qy.max() < RAMP_SIDE - 20
    np.testing.assert_allclose(crop[1:-1, 1:-1], _ramp_at(qx, qy)[1:-1, 1:-1], atol=2e-3)


@pytest.mark.parametrize(
    "box,size",
    [
        ((541.5, 573.4, 1041.4, 1291.4), 128),  # spacing 9.8: last row and column at 31-57 % of the image value
        ((550.0, 530.0, 800.0, 810.0), 64),  # spacing 8.5
    ],
)
def test_warp_reads_every_crop_pixel_when_the_window_is_inside(box, size):
    image = np.full((2000, 2000, 1), 100.0, np.float32)
    m = crop_matrix(np.asarray(box), size, CropSpec())
    qx, qy = _sample_positions(m, size)
    assert qx.min() > 40 and qy.min() > 40 and qx.max() < 1960 and qy.max() < 1960
    crop = warp_image(image, m, size)
    np.testing.assert_allclose(crop, 100.0, atol=1e-2)


@pytest.mark.parametrize(
    "box,size",
    [((300.0, 310.0, 700.0, 720.0), 128), ((100.0, 120.0, 180.0, 200.0), 128), ((400.0, 400.0, 500.0, 470.0), 32)],
)
def test_warp_constant_image_stays_constant_inside(box, size):
    image = np.full((1000, 1000, 3), 77.0, np.float32)
    crop = warp_image(image, crop_matrix(np.asarray(box), size, CropSpec()), size)
    np.testing.assert_allclose(crop, 77.0, atol=1e-3)


def test_warp_stays_within_the_source_range():
    image = np.full((400, 400, 3), 255.0, np.float32)
    crop = warp_image(image, crop_matrix(np.array([100.0, 100.0, 250.0, 260.0]), 128, CropSpec()), 128)
    assert crop.max() <= 255.0


def test_warp_matches_opencv_on_a_smooth_image():
    cv2 = pytest.importorskip("cv2")
    yy, xx = np.mgrid[0:240, 0:260].astype(np.float32)
    image = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0), (xx + yy) / 2], axis=-1).astype(np.float32)
    m = crop_matrix(np.array([60.0, 50.0, 150.0, 160.0]), 128, CropSpec())
    ours = warp_image(image, m, 128)
    theirs = cv2.warpAffine(image, m, (128, 128), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    assert np.abs(ours - theirs).mean() < 0.3
    assert np.abs(ours - theirs).max() < 5.0


@pytest.mark.parametrize(
    "box",
    [
        (1000.0, 1000.0, 1100.0, 1100.0),  # far bottom-right
        (-600.0, -500.0, -400.0, -300.0),  # far top-left
        (50.0, -900.0, 150.0, -700.0),  # above
        (-300.0, 20.0, -120.0, 90.0),  # left, window ends just before the image
    ],
)
@pytest.mark.parametrize("size", [128, 64])
def test_warp_box_entirely_outside_is_zero(box, size):
    image = np.full((200, 240, 3), 255.0, np.float32)
    m = crop_matrix(np.asarray(box), size, CropSpec())
    corners = apply_affine(invert_affine(m), np.array([[-0.5, -0.5], [size - 0.5, size - 0.5]]))
    outside = corners[1, 0] < -1 or corners[1, 1] < -1 or corners[0, 0] > 240 or corners[0, 1] > 200
    assert outside
    crop = warp_image(image, m, size)
    assert crop.shape == (size, size, 3)
    assert not crop.any()


@pytest.mark.parametrize(
    "box,size",
    [
        ((-60.0, 40.0, 60.0, 160.0), 128),  # straddles the left edge, no halving
        ((150.0, 140.0, 260.0, 230.0), 96),  # straddles right and bottom
        ((-150.0, -120.0, 150.0, 160.0), 64),  # straddles top-left, halving path
    ],
)
def test_warp_box_partially_outside_zero_outside(box, size):
    H, W = 200, 240
    image = np.full((H, W, 1), 100.0, np.float32)
    m = crop_matrix(np.asarray(box), size, CropSpec())
    inv = invert_affine(m)
    spacing = np.hypot(*inv[:, 0])
    crop = warp_image(image, m, size)[..., 0]
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    qx = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
    qy = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    margin = 1.0 + spacing  # bilinear reach plus box averaging
    out = (qx < -margin) | (qy < -margin) | (qx > W - 1 + margin) | (qy > H - 1 + margin)
    inside = (qx > margin) & (qy > margin) & (qx < W - 1 - margin) & (qy < H - 1 - margin)
    assert out.any() and inside.any()
    assert not crop[out].any()
    np.testing.assert_allclose(crop[inside], 100.0, atol=1e-3)


def test_warp_rejects_2d_image():
    with pytest.raises(ValueError):
        warp_image(np.zeros((10, 10), np.float32), crop_matrix(np.array([0, 0, 5, 5.0]), 8, CropSpec()), 8)


# --------------------------------------------------------------------------- augmentation geometry


def test_mirror_permutation_is_an_involution_with_the_standard_pairs():
    perm = mirror_permutation()
    assert perm.shape == (NUM_LANDMARKS,)
    assert sorted(perm.tolist()) == list(range(NUM_LANDMARKS))
    np.testing.assert_array_equal(perm[perm], np.arange(NUM_LANDMARKS))
    for a, b in [(36, 45), (39, 42), (48, 54), (0, 16), (8, 8), (17, 26), (31, 35), (60, 64), (30, 30), (51, 51), (57, 57)]:
        assert perm[a] == b and perm[b] == a
    # Regions swap sides as whole sets; centre-line regions map onto themselves.
    assert set(perm[list(REGIONS["right_eye"])]) == set(REGIONS["left_eye"])
    assert set(perm[list(REGIONS["right_brow"])]) == set(REGIONS["left_brow"])
    for name in ("jaw", "nose_bridge", "nose_base", "outer_lip", "inner_lip"):
        assert set(perm[list(REGIONS[name])]) == set(REGIONS[name])
    assert len({frozenset(p) for p in MIRROR_PAIRS}) == len(MIRROR_PAIRS)


def test_mirror_permutation_on_a_symmetric_synthetic_face():
    """Mirror a face built symmetric by construction: relabelled mirror == original."""
    perm = mirror_permutation()
    rng = np.random.default_rng(5)
    pts = np.zeros((NUM_LANDMARKS, 2))
    fixed = [i for i in range(NUM_LANDMARKS) if perm[i] == i]
    pts[fixed] = np.c_[np.zeros(len(fixed)), rng.uniform(-1, 1, len(fixed))]
    for a, b in MIRROR_PAIRS:
        x, y = rng.uniform(0.1, 1), rng.uniform(-1, 1)
        pts[a], pts[b] = (-x, y), (x, y)  # a on the image left, b on the right
    mirrored = pts * np.array([-1.0, 1.0])
    np.testing.assert_allclose(mirror_points(mirrored), pts)


def test_random_similarity_pure_flip_mirrors_about_crop_centre():
    spec = AugmentSpec(flip=1.0, rotation=0.0, scale=(1.0, 1.0), shift=0.0, color=0.0, occlusion=0.0)
    m, flipped = random_similarity(np.random.default_rng(0), 128, spec)
    assert flipped
    np.testing.assert_allclose(m, [[-1.0, 0.0, 127.0], [0.0, 1.0, 0.0]], atol=1e-12)
    spec = AugmentSpec(flip=0.0, rotation=0.0, scale=(1.0, 1.0), shift=0.0)
    m, flipped = random_similarity(np.random.default_rng(0), 128, spec)
    assert not flipped
    np.testing.assert_allclose(m, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.sampled_from(INPUT_SIZES))
def test_property_random_similarity_keeps_centre_near_and_is_a_similarity(seed, size):
    spec = AugmentSpec()
    m, flipped = random_similarity(np.random.default_rng(seed), size, spec)
    lin = m[:, :2]
    det = np.linalg.det(lin)
    assert (det < 0) == flipped
    scale = np.sqrt(abs(det))
    assert spec.scale[0] - 1e-9 <= scale <= spec.scale[1] + 1e-9
    # conformal: columns orthogonal with equal norms
    assert abs(lin[:, 0] @ lin[:, 1]) < 1e-9
    np.testing.assert_allclose(np.linalg.norm(lin, axis=0), [scale, scale], rtol=1e-9)
    c = (size - 1) / 2
    moved = apply_affine(m, np.array([[c, c]]))[0] - c
    assert np.all(np.abs(moved) <= spec.shift * size + 1e-9)
    angle = np.degrees(np.arctan2(lin[1, 0], lin[0, 0] if not flipped else -lin[0, 0]))
    assert abs(angle) <= spec.rotation + 1e-6


# --------------------------------------------------------------------------- the dataset transform on a synthetic face


def _synthetic_face(rng) -> np.ndarray:
    """A left-right symmetric 68-point face (pair members a on the image left), in image pixels."""
    perm = mirror_permutation()
    pts = np.zeros((NUM_LANDMARKS, 2))
    fixed = [i for i in range(NUM_LANDMARKS) if perm[i] == i]
    pts[fixed] = np.c_[np.zeros(len(fixed)), rng.uniform(-60, 60, len(fixed))]
    for a, b in MIRROR_PAIRS:
        x, y = rng.uniform(5, 50), rng.uniform(-60, 60)
        pts[a], pts[b] = (-x, y), (x, y)
    return pts + (140.3, 151.7)


@pytest.fixture()
def synthetic_folder(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, size=(300, 280, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "face.png"), image)
    pts = _synthetic_face(rng)
    # break the symmetry a little so that a wrong relabelling would show
    pts += rng.normal(0, 2.0, size=pts.shape)
    write_pts(tmp_path / "face.pts", pts)
    return tmp_path, pts


@pytest.mark.parametrize("size", INPUT_SIZES)
def test_dataset_targets_decode_back_at_every_input_size(synthetic_folder, size):
    folder, pts = synthetic_folder
    sample = FaceFolder(folder, size)[0]
    stride = size / (size // 4)
    decoded, _ = decode_heatmaps(sample["heatmaps"][None], size)
    back = crop_points_to_image(decoded, sample["matrix"][None])[0]
    bound = 0.25 * stride * _scale(landmark_boxes(pts[None])[0], size)
    assert np.abs(back - pts).max() <= bound * (1 + 1e-6) + 1e-6  # .pts keeps 6 decimals


@pytest.mark.parametrize("size", INPUT_SIZES)
def test_flip_augmentation_relabels_mirror_points(synthetic_folder, size):
    folder, pts = synthetic_folder
    spec = AugmentSpec(flip=1.0, rotation=0, scale=(1, 1), shift=0, color=0, occlusion=0)
    plain = FaceFolder(folder, size)[0]
    flip = FaceFolder(folder, size, augment=spec, seed=5)[0]
    p, f = plain["crop_points"], flip["crop_points"]
    for a, b in [(36, 45), (39, 42), (48, 54), (0, 16), (8, 8)]:
        np.testing.assert_allclose(f[a], [size - 1 - p[b, 0], p[b, 1]], atol=1e-9)
        np.testing.assert_allclose(f[b], [size - 1 - p[a, 0], p[a, 1]], atol=1e-9)
    # the new 36 (left-eye outer corner) is on the image left again
    assert f[36, 0] < f[45, 0] and p[36, 0] < p[45, 0]
    np.testing.assert_allclose(flip["image"], plain["image"][:, :, ::-1], atol=1e-5)
    np.testing.assert_allclose(flip["heatmaps"], plain["heatmaps"][mirror_permutation()][:, :, ::-1], atol=1e-5)
